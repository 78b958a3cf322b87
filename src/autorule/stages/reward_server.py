"""Stage ``reward_server``: the reward terms of ``grpo.rewards`` served over HTTP for OpenRLHF.

    python -m autorule stage=reward_server experiment=autorule_uf       # serves until Ctrl-C
    python -m autorule stage=grpo experiment=autorule_uf grpo.engine=openrlhf   # the Ray job
    sbatch scripts/slurm/openrlhf.sh experiment=autorule_uf             # both, on a cluster

OpenRLHF's ``train_ppo_ray`` asks a remote reward model for each rollout's rewards
(``--remote_rm_url``). This stage answers it with the same reward the TRL path computes: the
terms of ``grpo.rewards`` weighted by ``grpo.reward_weights``, built by the reward registry from
the same inputs (the rm artifact for ``rm``, the rule set and the judge role ``judge.llm`` for
``rules``) and the sft artifact's tokenizer (response lengths, the special tokens stripped from
each decoded query). The wire format and the batching are in :mod:`autorule.rewards.server`.

Artifact: ``server.json`` (the terms, weights, rules and the URL it was first served at) and a
manifest recording the artifacts it reads, so a run's rewards can be traced to the rm model and
rule set behind them. The server then serves until SIGINT or SIGTERM, and stops cleanly (the
open batch is finished, the port closed). With an up-to-date artifact it serves at once.

Each serving session logs into ``sessions/<UTC start>-<pid>/`` of the artifact: ``scores.jsonl``
(one row per scored batch: its size and the means of the total, each term and each rule) and
``llm_usage.json`` (what the judge's calls cost, rewritten every ``reward_server.usage_every_s``
seconds and on stop). They are run records, outside the content hash
(:mod:`autorule.rewards.score_log`); grpo on OpenRLHF builds its training log from them.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from omegaconf import DictConfig

from autorule.core.config import ConfigError, check_number, check_paths
from autorule.core.stage import StageSpec
from autorule.rewards import registry as rewards
from autorule.rewards.score_log import SERVER_FILE
from autorule.training.arguments import MODEL

log = logging.getLogger(__name__)

terms = rewards.grpo_terms  # the terms served: grpo.rewards


# What the served terms read (their artifacts, settings, the rule set, model folders by
# content) comes from their declarations in the reward registry.
SPEC = StageSpec(
    name="reward_server",
    inputs=("sft",),
    inputs_when=lambda cfg: rewards.artifact_inputs(cfg, terms(cfg)),
    uses_rules=lambda cfg: rewards.uses_rules(terms(cfg)),
    keys=(
        "grpo.rewards",
        "grpo.reward_weights",
        "grpo.max_completion_length",
        "model.name_or_path",
        "model.tiny",
        "model.pad_token",
    ),
    keys_when=lambda cfg: rewards.hashed_sections(terms(cfg)),
    ignore=("rubric.debug_examples",),
    ignore_when=lambda cfg: rewards.unhashed_keys(cfg, terms(cfg)),
    fingerprint=lambda cfg: rewards.model_fingerprints(cfg, terms(cfg)) or None,
    llm_roles=("judge.llm", "rubric.grader"),
)


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot serve, before any model is loaded."""
    from autorule.rewards.registry import REWARDS

    check_paths(cfg)
    section, terms = cfg.reward_server, list(cfg.grpo.rewards)
    unknown = [name for name in terms if name not in REWARDS]
    if not terms or unknown:
        raise ConfigError(
            f"grpo.rewards={terms}: "
            + (f"unknown terms {unknown}; " if unknown else "no term given; ")
            + f"known terms: {sorted(REWARDS)}"
        )
    if "rubric" in terms:
        raise ConfigError(
            "grpo.rewards: the rubric term reads each prompt's rubric items, which OpenRLHF's "
            "remote reward requests do not carry; serve the other terms"
        )
    weights = cfg.grpo.reward_weights
    if weights is not None and len(weights) != len(terms):
        raise ConfigError(
            f"grpo.reward_weights has {len(weights)} values for {len(terms)} terms in "
            f"grpo.rewards={terms}"
        )
    check_number(section.port, "reward_server.port", low=0, high=65535)
    check_number(section.batch_wait_s, "reward_server.batch_wait_s", integer=False, low=0)
    check_number(section.max_batch, "reward_server.max_batch", low=1)
    check_number(section.reuse_s, "reward_server.reuse_s", integer=False, low=0)
    check_number(
        section.usage_every_s, "reward_server.usage_every_s", integer=False, low=0, low_open=True
    )
    check_number(
        section.max_body_mb, "reward_server.max_body_mb", integer=False, low=0, low_open=True
    )
    from autorule.rewards.settings import check_scoring

    check_scoring(cfg)  # the terms' settings, the judge's and the grader's, with their roles


def roles_in_use(cfg: DictConfig) -> list[str]:
    """The judge's role, when the rules term is served (probed before the server starts)."""
    return ["judge.llm"] if "rules" in terms(cfg) else []


def build_server(
    cfg: DictConfig,
    inputs: dict[str, Path],
    port: int | None = None,
    artifact: Path | None = None,
):
    """The :class:`~autorule.rewards.server.RewardServer` of this config (not started) and the
    reward functions it holds (close them with ``close_all`` after stopping it). With
    ``artifact`` (the committed reward_server folder) it logs a session there
    (:class:`~autorule.rewards.score_log.SessionLog`): each batch's means, the roles' usage."""
    from autorule.data.models import load_tokenizer
    from autorule.llm.base import add_roles
    from autorule.rewards.registry import RewardContext, build_reward_funcs
    from autorule.rewards.score_log import SessionLog
    from autorule.rewards.server import RewardServer, term_scorer
    from autorule.rules.ruleset import load_rules

    section, terms = cfg.reward_server, list(cfg.grpo.rewards)
    tokenizer = load_tokenizer(cfg, name_or_path=str(inputs["sft"] / MODEL))
    rules = load_rules(cfg, inputs) if SPEC.reads_rules(cfg) else []
    context = RewardContext(
        cfg=cfg,
        rm_folder=inputs.get("rm"),
        inputs=dict(inputs),
        rules=rules,
        device=section.device,
        tokenizer=tokenizer,
        max_completion_length=int(cfg.grpo.max_completion_length),
    )
    funcs = build_reward_funcs(terms, context)
    weights = [float(w) for w in (cfg.grpo.reward_weights or [1.0] * len(terms))]
    special = [t for t in (tokenizer.eos_token, tokenizer.pad_token) if t]
    info = {"terms": terms, "weights": weights, "rules": len(rules)}
    server = RewardServer(
        term_scorer(funcs, weights),
        host=str(section.host),
        port=int(section.port) if port is None else port,
        path=str(section.path),
        special_tokens=special,
        # Decoding with clean_up_tokenization_spaces drops spaces before punctuation.
        prompt_variants=lambda prompt: [tokenizer.clean_up_tokenization(prompt)],
        wait_s=float(section.batch_wait_s),
        max_batch=int(section.max_batch),
        max_body_bytes=int(float(section.max_body_mb) * 2**20),
        reuse_s=float(section.reuse_s),
        info=info,
    )
    if artifact is not None:  # opened once the port is bound: a failed start leaves no session
        llms: dict = {}
        for func in funcs:
            add_roles(llms, getattr(func, "llms", {}))
        session = SessionLog(artifact, terms, llms, float(section.usage_every_s))
        server.log_to(session)
        server.info["session"] = info["session"] = session.folder.name  # /health says it too
    return server, funcs, info


def prepare(cfg: DictConfig) -> tuple[Path, dict[str, Path]]:
    """Resolves the inputs and records them in the artifact (``server.json`` and the manifest);
    returns the artifact's folder and the inputs."""
    from autorule.core.artifacts import StageJob
    from autorule.core.files import write_json_redacted
    from autorule.rewards.server import advertised_url
    from autorule.rules.ruleset import load_rules

    with StageJob(cfg, SPEC.name) as job:
        inputs = {name: job.input(name) for name in SPEC.inputs_for(cfg)}
        if not job.done:
            terms = list(cfg.grpo.rewards)
            rules = load_rules(cfg, inputs) if SPEC.reads_rules(cfg) else []
            record = {
                "terms": terms,
                "weights": [float(w) for w in (cfg.grpo.reward_weights or [1.0] * len(terms))],
                "rules": rules,
                "url": advertised_url(cfg.reward_server),
                "inputs": {name: str(folder) for name, folder in inputs.items()},
            }
            write_json_redacted(job.workdir / SERVER_FILE, record)
            job.commit({"terms": len(terms), "rules": len(rules)})
    return job.path, inputs


def run(cfg: DictConfig) -> Path:
    """Records the inputs, then serves until SIGINT / SIGTERM."""
    from autorule.rewards.registry import close_all
    from autorule.rewards.server import advertised_url

    check(cfg)
    path, inputs = prepare(cfg)
    server, funcs, info = build_server(cfg, inputs, artifact=path)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _signals()}
    server.start()
    print(
        f"[autorule] reward server: {', '.join(info['terms'])} on {server.url()} "
        f"(OpenRLHF: --remote_rm_url {advertised_url(cfg.reward_server)}); Ctrl-C stops it",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        server.stop()
        close_all(funcs)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(
            f"[autorule] reward server stopped ({server.requests}); its log: "
            f"{server.session.folder}",
            flush=True,
        )
    return path


def _signals() -> list[int]:
    # Signal handlers can only be set from the main thread (a test may run the stage elsewhere).
    if threading.current_thread() is not threading.main_thread():
        return []
    return [signal.SIGINT, signal.SIGTERM]
