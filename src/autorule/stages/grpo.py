"""Stage ``grpo``: reinforcement learning of the SFT policy with named reward terms (TRL GRPO).

    python -m autorule stage=grpo                                     # tiny profile, CPU
    python -m autorule stage=grpo experiment=autorule_uf              # rm + rules (AutoRule)
    sbatch scripts/slurm/grpo.sh experiment=autorule_uf              # the paper's run

The policy starts from the ``sft`` artifact's model and is trained with TRL's ``GRPOTrainer`` on
the ``grpo.prompt_split`` prompts of the preprocess artifact (``train_prefs``, in the paper's
``<|user|>...<|assistant|>`` template). For each prompt the trainer samples ``num_generations``
responses; each response gets the weighted sum of the reward terms named in ``grpo.rewards``
(``autorule.rewards``: the reward model, rule satisfaction judged by an LLM, a length penalty,
...), and advantages are normalised within each prompt's group.

Rubric data (docs/rubric.md) gives the prompts instead: ``grpo.rubric_dataset=addition`` (or
``prometheus``) reads ``<grpo.prompt_split>.jsonl`` of that dataset's preprocess artifact,
``grpo.rubric_file`` a rubric JSONL file of your own (hashed by content). Each conversation is
rendered in the policy's prompt format (``preprocess.prompt_format``), and its rubric items and
conversation travel as dataset columns, which TRL hands to the ``rubric`` reward term.

What it reads: the sft artifact always; the preprocess artifact of this run's dataset, or of
``grpo.rubric_dataset``, unless ``grpo.rubric_file`` is set; the rm artifact when the ``rm`` term
is used (its model and its score statistics); the rule set when the ``rules`` term is used (the
extract artifact, or ``rules.path``: recorded and hashed like any input).

``grpo.lora_rank`` trains a LoRA adapter (peft) instead of every weight; the artifact keeps the
adapter (``adapter/``) and, as ``model/``, the policy with the adapter merged in, so it loads like
any other.

Artifact: ``model/`` (the trained policy, ``from_pretrained`` loads it), ``metrics.json`` (each
reward term's mean at the first and at the last logging step, and on ``grpo.eval_split`` when
evaluated, losses, steps),
``rule_satisfaction.json`` (each rule's text and its satisfaction rate at the first and at the last
logging step, when the ``rules`` term is used), ``log_history.jsonl`` (every logged step:
reward terms, per-rule rates, KL, lengths) and the manifest. Resuming and multi-GPU launching
work as for ``sft`` (:mod:`autorule.training.launch`).

TRL differs from the released (OpenRLHF) setup in a few places; ``docs/rewards.md`` lists them.
``grpo.engine=openrlhf`` trains with the released engine instead: the stage submits OpenRLHF's
``train_ppo_ray`` as a Ray job (:mod:`autorule.training.openrlhf`), rewarded by the reward server
(``stage=reward_server``), and commits the policy the job saved as ``model/``, with a
``log_history.jsonl`` of rollouts built from the reward server's score log; with
``grpo.openrlhf.advantage_estimator=gae`` that is PPO with a critic (``experiment=ppo_baseline``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from autorule.core.config import ConfigError, check_choice, check_number, check_paths
from autorule.core.files import write_json_redacted, write_jsonl
from autorule.core.stage import StageSpec
from autorule.llm.base import USAGE_KEY
from autorule.rewards import registry as rewards
from autorule.rewards.settings import check_scoring
from autorule.training import lora
from autorule.training.arguments import MODEL, check_training, runtime_keys
from autorule.training.launch import check_launcher, run_training, world_size

log = logging.getLogger(__name__)

RULE_TABLE = "rule_satisfaction.json"
LOG_HISTORY = "log_history.jsonl"
# Where an OpenRLHF run's log_history.jsonl came from (metrics.json and the manifest).
LOG_SOURCE = "log_source"


def roles_in_use(cfg: Any) -> list[str]:
    """The LLM roles of the reward terms in use: the judge (rules), the grader (rubric)."""
    return [role for term, role in SERVED_TERMS.items() if uses_term(cfg, term)]


# Reward terms that call an LLM role.
SERVED_TERMS = {"rules": "judge.llm", "rubric": "rubric.grader"}
# TRL GRPOConfig's loss_type values (token-level aggregation of the loss).
LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo")
# The splits a rubric dataset's preprocess artifact holds.
RUBRIC_SPLITS = ("train", "test")


terms = rewards.grpo_terms  # the reward terms in use: grpo.rewards


def uses_term(cfg: Any, name: str) -> bool:
    return name in terms(cfg)


def on_openrlhf(cfg: Any) -> bool:
    """Whether OpenRLHF trains (``grpo.engine=openrlhf``): the reward server then scores."""
    return str(cfg.grpo.get("engine", "trl")) == "openrlhf"


def scored_terms(cfg: Any) -> list[str]:
    """The terms this stage's own processes compute: all of ``grpo.rewards`` on TRL, none on
    OpenRLHF (the reward server scores them, and its artifact is the input)."""
    return [] if on_openrlhf(cfg) else terms(cfg)


def reads_rm_on_openrlhf(cfg: Any) -> bool:
    """OpenRLHF reads the rm artifact's model: the PPO critic starts from it, or OpenRLHF's own
    reward actor scores with it (``grpo.openrlhf.reward=rm``)."""
    from autorule.training.openrlhf import served_reward, uses_critic

    if not on_openrlhf(cfg):
        return False
    critic = uses_critic(cfg.grpo) and cfg.grpo.openrlhf.critic_init == "rm"
    return critic or not served_reward(cfg.grpo)


def reward_server_used(cfg: Any) -> bool:
    from autorule.training.openrlhf import served_reward

    return on_openrlhf(cfg) and served_reward(cfg.grpo)


def read_artifacts(cfg: Any) -> tuple[str, ...]:
    """The artifacts of the terms this stage computes (their declarations in the reward
    registry), and the rm artifact when OpenRLHF reads it."""
    found = rewards.artifact_inputs(cfg, scored_terms(cfg))
    return (*found, "rm") if reads_rm_on_openrlhf(cfg) else found


def unused_settings(cfg: Any) -> tuple[str, ...]:
    """Keys that decide nothing under ``cfg``: a model-folder key of a term (its folder is
    hashed by content instead), the engine's settings on TRL (TRL runs hash as before the
    engine switch; on OpenRLHF the reward server, an input, covers what it reads), LoRA's alpha
    when no adapter is trained."""
    engine = ("grpo.engine", "grpo.openrlhf") if not on_openrlhf(cfg) else ()
    return (
        *rewards.unhashed_keys(cfg, scored_terms(cfg)),
        *engine,
        *lora.unused_keys(cfg, "grpo"),
    )


def fingerprint(cfg: Any) -> dict[str, Any] | None:
    """What grpo reads from outside paths.root, by content: ``grpo.rubric_file`` and the model
    folders reward terms are pointed at (their paths are not hashed: two clones share)."""
    found: dict[str, Any] = rewards.model_fingerprints(cfg, scored_terms(cfg))
    path = cfg.grpo.get("rubric_file")
    if path:
        file = Path(str(path)).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"grpo.rubric_file={path} is not a file (a rubric JSONL file)")
        from autorule.core.hashing import file_sha256

        found["rubric_file"] = file_sha256(file)
    return found or None


def trainer_args(section: Mapping[str, Any]) -> dict[str, Any]:
    """GRPOConfig's own arguments from the ``grpo`` section (the shared ones come from
    :func:`autorule.training.arguments.shared_kwargs`)."""
    generations = int(section["num_generations"])
    if generations < 2:
        raise ValueError(
            f"grpo.num_generations={generations}: group-normalised advantages need >= 2"
        )
    weights = section.get("reward_weights")
    if weights is not None and len(weights) != len(section["rewards"]):
        raise ValueError(
            f"grpo.reward_weights has {len(weights)} values for {len(section['rewards'])} "
            f"terms in grpo.rewards={list(section['rewards'])}"
        )
    return {
        "num_generations": generations,
        # Completions sampled per rollout, over all processes: prompts x samples per prompt.
        "generation_batch_size": int(section["prompts_per_rollout"]) * generations,
        "max_completion_length": int(section["max_completion_length"]),
        "temperature": float(section["temperature"]),
        "top_p": float(section["top_p"]),
        "beta": float(section["kl_coef"]),
        "epsilon": float(section["clip_range"]),
        "num_iterations": int(section["num_iterations"]),
        "scale_rewards": str(section["scale_rewards"]),
        "loss_type": str(section["loss_type"]),
        "reward_weights": [float(w) for w in weights] if weights is not None else None,
        "use_vllm": bool(section["use_vllm"]),
        "vllm_mode": str(section["vllm_mode"]),
        "log_completions": False,
        # Every checkpoint stays for the evaluation's reward-hacking curve (their models only).
        **({"save_total_limit": None} if section.get("keep_checkpoints") else {}),
    }


# Generation through vLLM or transformers samples the same distribution: speed, not output.
_RUNTIME = runtime_keys("grpo") + ("grpo.use_vllm", "grpo.vllm_mode")

# What the reward terms read (their artifacts, their settings, the rule set) comes from their
# declarations in the reward registry, for the terms in use only: the baseline's artifact does
# not move with the judge's settings, and a retrained reward model moves the artifact.
SPEC = StageSpec(
    name="grpo",
    inputs=("preprocess", "sft", "reward_server"),
    inputs_when=read_artifacts,
    only_if={
        "preprocess": lambda cfg: not cfg.grpo.get("rubric_file"),
        # On OpenRLHF the reward server scores, and its artifact records what it reads.
        "reward_server": reward_server_used,
    },
    # Rubric prompts come from the preprocess artifact of the rubric dataset.
    input_datasets={"preprocess": "grpo.rubric_dataset"},
    uses_rules=lambda cfg: rewards.uses_rules(scored_terms(cfg)),
    keys=("grpo", "model.name_or_path", "model.tiny", "model.pad_token"),
    keys_when=lambda cfg: rewards.hashed_sections(terms(cfg)),
    # The rubric file is identified by its content (the fingerprint), not its path; the debug
    # view only prints.
    ignore=(
        *_RUNTIME,
        "grpo.rubric_file",
        "rubric.debug_examples",
        "grpo.concurrent_rewards",
        "grpo.openrlhf.ray_address",  # where the job is submitted, not what it trains
    ),
    ignore_when=unused_settings,
    fingerprint=fingerprint,
    llm_roles=("judge.llm", "rubric.grader"),
    trains=True,
    resumable=True,
    trainer_args=trainer_args,
)


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before any model is loaded or any judge is called."""
    from autorule.rewards.registry import REWARDS

    check_paths(cfg)
    check_choice(cfg.grpo.engine, "grpo.engine", ("trl", "openrlhf"))
    if on_openrlhf(cfg):
        check_openrlhf(cfg)
        return
    check_launcher(cfg)
    section = cfg.grpo
    check_training(section, SPEC.name, world_size(cfg))
    unknown = [name for name in section.rewards if name not in REWARDS]
    if not section.rewards or unknown:
        raise ConfigError(
            f"grpo.rewards={list(section.rewards)}: "
            + (f"unknown terms {unknown}; " if unknown else "no term given; ")
            + f"known terms: {sorted(REWARDS)}"
        )
    check_number(section.num_generations, "grpo.num_generations", low=2, meaning=" (a group)")
    check_number(section.prompts_per_rollout, "grpo.prompts_per_rollout", low=1)
    check_number(section.max_completion_length, "grpo.max_completion_length", low=1)
    check_number(section.max_prompts, "grpo.max_prompts", low=1, none_ok=True)
    check_number(section.temperature, "grpo.temperature", integer=False, low=0, low_open=True)
    check_number(section.kl_coef, "grpo.kl_coef", integer=False, low=0)
    check_number(section.clip_range, "grpo.clip_range", integer=False, low=0, low_open=True)
    check_choice(section.scale_rewards, "grpo.scale_rewards", ("group", "batch", "none"))
    check_number(section.top_p, "grpo.top_p", integer=False, low=0, high=1, low_open=True)
    check_number(
        section.num_iterations,
        "grpo.num_iterations",
        low=1,
        meaning=" (0 would commit the SFT model untrained)",
    )
    check_choice(section.loss_type, "grpo.loss_type", LOSS_TYPES)
    check_choice(section.vllm_mode, "grpo.vllm_mode", ("colocate", "server"))
    weights = section.reward_weights
    if weights is not None:
        if len(weights) != len(section.rewards):
            raise ConfigError(
                f"grpo.reward_weights={list(weights)} has {len(weights)} values for the "
                f"{len(section.rewards)} terms of grpo.rewards={list(section.rewards)}"
            )
        for i, weight in enumerate(weights):
            check_number(weight, f"grpo.reward_weights[{i}]", integer=False)
    repeated = sorted({n for n in section.rewards if list(section.rewards).count(n) > 1})
    if repeated:
        raise ConfigError(
            f"grpo.rewards={list(section.rewards)} lists {repeated} twice: each term once "
            "(give it a larger weight in grpo.reward_weights instead)"
        )
    rollout = int(section.prompts_per_rollout) * int(section.num_generations)
    per_step = int(section.micro_batch_size) * world_size(cfg)
    if rollout % per_step:
        raise ConfigError(
            f"a rollout of grpo.prompts_per_rollout={section.prompts_per_rollout} x "
            f"grpo.num_generations={section.num_generations} = {rollout} completions must split "
            f"into micro batches of grpo.micro_batch_size={section.micro_batch_size} x "
            f"{world_size(cfg)} processes"
        )
    trainer_args(section)  # reward weights against terms
    check_rubric_data(cfg)
    if bool(section.eval_split) != bool(section.eval_steps):
        raise ConfigError(
            f"grpo.eval_split={section.eval_split} and grpo.eval_steps={section.eval_steps}: "
            "evaluation needs both, a held-out split and how often to evaluate it"
        )
    if section.eval_split and section.rubric_file:
        raise ConfigError("grpo.eval_split: a rubric file has no splits (set grpo.eval_split=null)")
    lora.check(section, "grpo")
    if section.get("openrlhf") is not None:
        from autorule.training.openrlhf import check_numbers

        check_numbers(section.openrlhf)
    check_prompt_split(cfg)
    check_scoring(cfg)
    check_files(cfg)


def check_files(cfg: DictConfig) -> None:
    """The rule file and the rubric file, read once up front: a format error names the file
    and the key now, not after the models have loaded."""
    from autorule.data.rubrics import read_jsonl
    from autorule.rules.ruleset import read_rules_file

    files = []
    if uses_term(cfg, "rules") and cfg.get("rules") and cfg.rules.get("path"):
        files.append(("rules.path", cfg.rules.path, read_rules_file))
    if cfg.grpo.rubric_file:
        files.append(("grpo.rubric_file", cfg.grpo.rubric_file, read_jsonl))
    for key, path, read in files:
        try:
            read(Path(str(path)).expanduser())
        except (OSError, ValueError) as err:  # format errors (yaml's too) name the file
            raise ConfigError(f"{key}={path}: {err}") from None
        except Exception as err:  # noqa: BLE001 - a parser's own error (yaml) names the file
            raise ConfigError(f"{key}={path}: {type(err).__name__}: {err}") from None


def check_prompt_split(cfg: DictConfig) -> None:
    """``grpo.prompt_split``: a split the preprocess stage writes (rubric data: train or test)."""
    section = cfg.grpo
    if section.rubric_file:
        return  # a rubric file has no splits
    splits = RUBRIC_SPLITS if section.rubric_dataset else list(cfg.preprocess.splits)
    check_choice(section.prompt_split, "grpo.prompt_split", splits)


def check_openrlhf(cfg: DictConfig) -> None:
    """``grpo.engine=openrlhf``: what OpenRLHF's trainer and the reward server can run; Ray's
    job client must be installed unless this is a dry run."""
    from autorule.training.openrlhf import (
        CRITIC_INITS,
        ESTIMATORS,
        REWARDS,
        ZERO_STAGES,
        require_ray,
        uses_critic,
    )

    section, engine = cfg.grpo, cfg.grpo.openrlhf
    check_choice(engine.advantage_estimator, "grpo.openrlhf.advantage_estimator", ESTIMATORS)
    check_choice(engine.critic_init, "grpo.openrlhf.critic_init", CRITIC_INITS)
    check_choice(engine.reward, "grpo.openrlhf.reward", REWARDS)
    if engine.reward == "rm" and list(section.rewards) != ["rm"]:
        raise ConfigError(
            f"grpo.openrlhf.reward=rm scores with the reward model alone, but grpo.rewards="
            f"{list(section.rewards)}: serve the terms (grpo.openrlhf.reward=server)"
        )
    check_choice(engine.kl_estimator, "grpo.openrlhf.kl_estimator", ("k1", "k2", "k3"))
    if section.deepspeed not in ZERO_STAGES:
        raise ConfigError(
            f"grpo.deepspeed={section.deepspeed}: OpenRLHF takes a ZeRO stage, one of "
            f"{list(ZERO_STAGES)}"
        )
    # GAE needs no group; the group estimators need two samples per prompt at least.
    low = 1 if uses_critic(section) else 2
    check_number(section.num_generations, "grpo.num_generations", low=low)
    for key in ("prompts_per_rollout", "global_batch_size", "micro_batch_size"):
        check_number(section[key], f"grpo.{key}", low=1)
    for key in ("micro_rollout_batch_size", "vllm_num_engines", "actor_num_gpus_per_node"):
        check_number(engine[key], f"grpo.openrlhf.{key}", low=1)
    for key, meaning in (
        ("rubric_file", "rubric prompts"),
        ("rubric_dataset", "rubric prompts"),
        ("lora_rank", "LoRA"),
        ("eval_split", "held-out evaluation"),
    ):
        if section.get(key):
            raise ConfigError(f"grpo.{key}={section[key]}: {meaning} run with grpo.engine=trl only")
    if not cfg.get("dry_run"):
        require_ray()


def check_rubric_data(cfg: DictConfig) -> None:
    """Rubric prompts: one source, a known rubric dataset, and rubric data for the rubric term."""
    from autorule.data.rubrics import RUBRIC_DATASETS

    section = cfg.grpo
    dataset, file = section.rubric_dataset, section.rubric_file
    if dataset and file:
        raise ConfigError(
            f"grpo.rubric_dataset={dataset} and grpo.rubric_file={file} both name the rubric "
            "prompts: set one"
        )
    if dataset:
        check_choice(dataset, "grpo.rubric_dataset", RUBRIC_DATASETS)
    if file and not Path(str(file)).expanduser().is_file():
        raise ConfigError(f"grpo.rubric_file={file} is not a file (a rubric JSONL file)")
    if uses_term(cfg, "rubric") and not (dataset or file):
        raise ConfigError(
            "the reward term rubric grades answers against each prompt's rubric items: set "
            f"grpo.rubric_dataset (one of {list(RUBRIC_DATASETS)}) or grpo.rubric_file"
        )


def run(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> Path:
    check(cfg)
    if on_openrlhf(cfg):
        return run_openrlhf(cfg)
    return run_training(cfg, SPEC.name, train, callbacks, describe=describe)


def run_openrlhf(cfg: DictConfig) -> Path:
    """Submits OpenRLHF's trainer as a Ray job and waits for it; its policy becomes ``model/``.

    The reward server (``stage=reward_server``, same overrides) must be serving: its artifact
    is an input, and ``--remote_rm_url`` points at it. The submitted command is kept as
    ``launch/openrlhf.sh``; ``dry_run=true`` prints it and writes nothing. The training log
    comes from the server's rows scored while the job ran (:func:`server_log`), OpenRLHF's own
    curves from ``tensorboard/``.
    """
    import subprocess

    from autorule.core.artifacts import StageJob, artifact_path, input_path, work_path
    from autorule.core.files import write_text_atomic
    from autorule.rewards.server import advertised_url
    from autorule.training.arguments import METRICS
    from autorule.training.launch import artifact_state
    from autorule.training.openrlhf import dry_run_report, show, submit_command, uses_critic

    names, url = SPEC.inputs_for(cfg), advertised_url(cfg.reward_server)
    if cfg.get("dry_run"):
        path = artifact_path(cfg, SPEC.name)
        inputs = {name: input_path(cfg, SPEC.name, name) for name in names}
        cmd = submit_command(cfg, work_path(path), inputs, url)
        states = {name: f"{folder} ({artifact_state(folder)})" for name, folder in inputs.items()}
        print(dry_run_report(cfg, cmd, states, url), flush=True)
        return path
    with StageJob(cfg, SPEC.name) as job:
        if job.done:
            return job.path
        inputs = {name: job.input(name) for name in names}
        cmd = submit_command(cfg, job.workdir, inputs, url)
        script = job.workdir / "launch" / "openrlhf.sh"
        script.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(script, "#!/usr/bin/env bash\n" + show(cmd) + "\n")
        log.info("[grpo] submitting to Ray: %s", " ".join(cmd))
        submitted = time.time()  # the window of the reward server's rows that are this job's
        subprocess.run(cmd, check=True)
        ended = time.time()
        model = job.workdir / MODEL
        if not (model / "config.json").is_file():
            raise RuntimeError(
                f"the OpenRLHF job ended without a policy in {model} (its --save_path): "
                f"see the job's logs (ray job logs, at {cfg.grpo.openrlhf.ray_address})"
            )
        metrics = {
            "engine": "openrlhf",
            "advantage_estimator": str(cfg.grpo.openrlhf.advantage_estimator),
            "critic": uses_critic(cfg.grpo),
            "rewards": list(cfg.grpo.rewards),
            "reward_url": url,
        }
        server = inputs.get("reward_server")
        if server is not None:
            metrics.update(server_log(cfg, job.workdir, server, submitted, ended))
        write_text_atomic(job.workdir / METRICS, json.dumps(metrics, indent=2) + "\n")
        extra = {"metrics": metrics, LOG_SOURCE: metrics.get(LOG_SOURCE)}
        if USAGE_KEY in metrics:
            extra[USAGE_KEY] = metrics[USAGE_KEY]
        return job.commit({}, extra=extra)


def server_log(
    cfg: DictConfig, workdir: Path, server: Path, start: float, end: float
) -> dict[str, Any]:
    """The training log of an OpenRLHF job, from the reward server's session logs
    (:mod:`autorule.rewards.score_log`): the rows scored between ``start`` and ``end``, grouped
    into rollouts, written as ``log_history.jsonl`` (and ``rule_satisfaction.json`` when the
    rules term is served); returns what metrics.json gets: where the log came from, each
    term's mean at the first and the last rollout, the judge's usage over the sessions that
    scored in the window. No row in the window: no log, and a warning saying why."""
    from autorule.rewards import score_log

    rows = score_log.read_sessions(server)
    window = score_log.in_window(rows, start, end)
    if not window:
        why = (
            "the reward server that answered was not this artifact's (no session of it logged "
            "a batch while the job ran), or the job scored nothing"
            if score_log.sessions(server)
            else "no reward server of this artifact has served (the one that answered was "
            "another's, or older than session logs)"
        )
        log.warning(
            "[grpo] no training log: the reward server artifact %s holds no scored batch "
            "between the job's submission and its end; %s",
            server,
            why,
        )
        return {LOG_SOURCE: None}
    size = int(cfg.grpo.prompts_per_rollout) * int(cfg.grpo.num_generations)
    history = score_log.rollouts(window, size)
    write_jsonl(workdir / LOG_HISTORY, history)
    names = list(cfg.grpo.rewards)
    out: dict[str, Any] = {
        LOG_SOURCE: "reward_server",
        "logged_rollouts": len(history),
        "logged_completions": sum(row[score_log.COMPLETIONS] for row in history),
        **reward_summary(history, names),
    }
    served_rules = score_log.served_rules(server)
    if "rules" in names and served_rules:
        table = rule_table(history, served_rules)
        write_json_redacted(workdir / RULE_TABLE, table)
        out["rules"] = len(table)
        out["steps_with_failed_verdicts"] = steps_with_failed_verdicts(history)
    usage = score_log.session_usage(server, {row[score_log.SESSION] for row in window})
    if usage:
        out[USAGE_KEY] = usage
    return out


def describe(cfg: DictConfig) -> list[str]:
    """The dry run's lines on the reward terms and the rollout arithmetic."""
    section = cfg.grpo
    weights = section.reward_weights or [1.0] * len(section.rewards)
    terms = ", ".join(f"{n} x {w}" for n, w in zip(section.rewards, weights, strict=True))
    lines = [
        f"rewards: {terms}",
        f"prompts: {prompt_source(cfg)}",
        f"rollout: {section.prompts_per_rollout} prompts x {section.num_generations} samples = "
        f"{int(section.prompts_per_rollout) * int(section.num_generations)} completions; "
        f"{section.global_batch_size} completions per optimizer step",
    ]
    if uses_term(cfg, "rules"):
        judge = cfg.judge
        lines.append(
            f"judge: mode={judge.mode} backend={judge.llm._target_.rsplit('.', 1)[-1]} "
            f"model={judge.llm.model}"
        )
        lines.append(
            f"judge prompts: {prompt_set_name(judge.prompts)} "
            f"(conversation shown {judge.prompts.conversation_format}); "
            f"truncation={judge.truncation} at max_input_tokens={judge.max_input_tokens}; "
            f"parse={judge.parse}"
        )
    if uses_term(cfg, "rubric"):
        grader = cfg.rubric.grader
        lines.append(
            f"rubric grader: backend={grader._target_.rsplit('.', 1)[-1]} model={grader.model}"
        )
    return lines + lora.describe(section)


def prompt_set_name(prompts) -> str:
    """Which set of conf/prompts/judge/ the judge's templates are, or "custom"."""
    from omegaconf import OmegaConf

    from autorule.core.config import CONF_DIR

    mine = OmegaConf.to_container(prompts, resolve=True)
    for path in sorted((CONF_DIR / "prompts" / "judge").glob("*.yaml")):
        if OmegaConf.to_container(OmegaConf.load(path), resolve=True) == mine:
            return path.stem
    return "custom"


def prompt_source(cfg: DictConfig) -> str:
    """Where the prompts come from, in words (the dry run's line)."""
    section = cfg.grpo
    if section.rubric_file:
        return f"rubric file {section.rubric_file}"
    if section.rubric_dataset:
        return f"rubric dataset {section.rubric_dataset}, split {section.prompt_split}"
    return f"preprocess split {section.prompt_split}"


def prompt_dataset(parquet: Path, limit: int | None):
    """A ``datasets.Dataset`` with one ``prompt`` column (the formatted prompts)."""
    import datasets

    prompts = pd.read_parquet(parquet, columns=["formatted_prompt"])["formatted_prompt"]
    prompts = prompts.drop_duplicates()
    if limit is not None:
        prompts = prompts.head(int(limit))
    return datasets.Dataset.from_dict({"prompt": prompts.tolist()})


def rubric_dataset(jsonl: Path, limit: int | None, render):
    """A ``datasets.Dataset`` of rubric prompts: ``prompt`` (``render(convo)``, the text the
    policy reads) and, as JSON, ``convo`` and ``rubric_items``, which TRL passes to the reward
    functions as keywords of those names."""
    import datasets

    from autorule.data.rubrics import read_jsonl

    points = read_jsonl(jsonl)
    if limit is not None:
        points = points[: int(limit)]
    return datasets.Dataset.from_dict(
        {
            "prompt": [render(point.convo) for point in points],
            "convo": [json.dumps(list(point.convo)) for point in points],
            "rubric_items": [
                json.dumps([i.to_dict() for i in point.rubric_items]) for point in points
            ],
        }
    )


def train_dataset(
    cfg: DictConfig,
    inputs: dict[str, Path],
    tokenizer,
    split_key: str = "prompt_split",
    limit: int | None = None,
):
    """The prompts of split ``grpo.<split_key>``: a preprocess split's formatted prompts, or
    rubric data (the rubric file has no splits)."""
    from autorule.data.rubrics import render_prompt

    section = cfg.grpo
    split = section[split_key]
    if not (section.rubric_file or section.rubric_dataset):
        return prompt_dataset(inputs["preprocess"] / f"{split}.parquet", limit)
    if section.rubric_file:
        jsonl = Path(str(section.rubric_file)).expanduser()
    else:
        jsonl = inputs["preprocess"] / f"{split}.jsonl"
        if not jsonl.is_file():
            found = sorted(p.stem for p in inputs["preprocess"].glob("*.jsonl"))
            raise FileNotFoundError(
                f"grpo.{split_key}={split}: the {section.rubric_dataset} preprocess artifact "
                f"has no {jsonl.name}; its splits: {found}"
            )
    fmt, template = str(cfg.preprocess.prompt_format), str(cfg.preprocess.plain_template)
    return rubric_dataset(
        jsonl, limit, lambda convo: render_prompt(convo, fmt, template, tokenizer)
    )


def reward_context(cfg: DictConfig, inputs: dict[str, Path], tokenizer):
    """What the reward terms need: the rm artifact, the rule set, the policy's tokenizer and its
    answer budget."""
    from autorule.rewards.registry import RewardContext
    from autorule.rules.ruleset import load_rules, rules_source

    reads = SPEC.reads_rules(cfg)
    return RewardContext(
        cfg=cfg,
        rm_folder=inputs.get("rm"),
        rules=load_rules(cfg, inputs) if reads else [],
        rules_source=rules_source(cfg, inputs) if reads else "no rule set",
        inputs=dict(inputs),
        tokenizer=tokenizer,
        max_completion_length=int(cfg.grpo.max_completion_length),
    )


def debug_callback(funcs: Sequence[Any]):
    """A callback that shows the reward terms' kept examples (``show_examples``) at each
    logging step, from the main process; None when no term keeps any."""
    from transformers import TrainerCallback

    showing = [f for f in funcs if getattr(f, "show_examples", None) is not None]
    if not showing:
        return None

    class ShowExamples(TrainerCallback):
        def on_log(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                for func in showing:
                    func.show_examples(state.global_step)

    return ShowExamples()


def build_trainer(
    cfg: DictConfig, workdir: Path, inputs: dict[str, Path], callbacks: Sequence[Any] = ()
):
    from trl import GRPOConfig, GRPOTrainer

    from autorule.data.models import load_tokenizer
    from autorule.rewards.registry import build_reward_funcs, concurrent
    from autorule.training.loop import config_kwargs

    section = cfg.grpo
    if section.use_vllm:
        from autorule.llm.vllm_offline import import_vllm

        import_vllm()  # a clear install hint rather than TRL's error deep inside the trainer
    policy = str(inputs["sft"] / MODEL)
    tokenizer = load_tokenizer(cfg, name_or_path=policy)
    dataset = train_dataset(cfg, inputs, tokenizer, limit=section.max_prompts)
    if len(dataset) < int(section.prompts_per_rollout):
        raise ValueError(
            f"grpo: {prompt_source(cfg)} gives {len(dataset)} prompts (grpo.max_prompts="
            f"{section.max_prompts}), fewer than one rollout of grpo.prompts_per_rollout="
            f"{section.prompts_per_rollout}: not a single step could run"
        )
    held_out = None
    if section.eval_split:
        held_out = train_dataset(cfg, inputs, tokenizer, "eval_split")
    context = reward_context(cfg, inputs, tokenizer)
    funcs = build_reward_funcs(list(section.rewards), context)
    if section.concurrent_rewards:
        funcs = [concurrent(func) for func in funcs]
    args = GRPOConfig(**config_kwargs(cfg, SPEC.name, workdir))
    shown = debug_callback(funcs) if int(cfg.rubric.debug_examples) else None
    # Each term hands its own metrics (per-rule satisfaction, judge failures) to TRL's
    # log_metric, so every tracker and log_history get them at each logging step.
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=funcs,
        args=args,
        train_dataset=dataset,
        eval_dataset=held_out,
        processing_class=tokenizer,
        callbacks=[*callbacks, *([shown] if shown else [])],
        peft_config=lora.lora_config(section, "CAUSAL_LM"),
    )
    return trainer, context.rules


def first_and_last(history: list[dict], key: str) -> tuple[float | None, float | None]:
    """The first and the last logged value of ``key``."""
    values = [entry[key] for entry in history if entry.get(key) is not None]
    return (values[0], values[-1]) if values else (None, None)


def reward_summary(history: list[dict], names: Sequence[str]) -> dict[str, Any]:
    """Each term's mean reward, and the total, at the first and the last logging step; the same
    for the held-out split's evaluations (``eval_reward...``) when there were any."""
    out: dict[str, Any] = {}
    for name in names:
        start, end = first_and_last(history, f"rewards/{name}/mean")
        out[f"reward_{name}_start"], out[f"reward_{name}_end"] = start, end
    out["reward_start"], out["reward_end"] = first_and_last(history, "reward")
    if any("eval_reward" in entry for entry in history):
        for name in names:
            start, end = first_and_last(history, f"eval_rewards/{name}/mean")
            out[f"eval_reward_{name}_start"], out[f"eval_reward_{name}_end"] = start, end
        out["eval_reward_start"], out["eval_reward_end"] = first_and_last(history, "eval_reward")
    return out


def steps_with_failed_verdicts(history: list[dict]) -> list[int]:
    """The logged steps whose rules reward counted failed judge calls as not satisfied (possible
    only with ``judge.max_failed_share`` > 0: otherwise such a step stops before its update)."""
    return [int(entry["step"]) for entry in history if (entry.get("judge/failed") or 0) > 0]


def rule_table(history: list[dict], rules: Sequence[str]) -> list[dict[str, Any]]:
    """One row per rule: its text and satisfaction rate at the first and last logging step."""
    rows = []
    for index, rule in enumerate(rules):
        start, end = first_and_last(history, f"rules/{index}")
        rows.append({"index": index, "rule": rule, "start": start, "end": end})
    return rows


def reward_usage(trainer) -> dict[str, dict[str, Any]]:
    """What the reward terms' LLM roles (the judge, the grader) cost, summed over processes:
    each process calls its own backend."""
    from autorule.llm.base import Usage, add_roles

    used = {}
    for func in trainer.reward_funcs:
        add_roles(used, getattr(func, "llms", {}))
    tallies = {role: llm.usage for role, llm in used.items()}
    if trainer.accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        merged: dict[str, Usage] = {}
        for part in gather_object([tallies]):
            for role, usage in part.items():
                merged.setdefault(role, Usage()).merge(usage)
        tallies = merged
    return {role: tallies[role].record(used[role].price) for role in tallies}


def train(
    cfg: DictConfig, workdir: Path, inputs: dict[str, Path], callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """Trains in this process (one of many under accelerate); writes the artifact's files."""
    from autorule.rewards.registry import close_all
    from autorule.training.loop import base_metrics, fit, save

    trainer, rules = build_trainer(cfg, workdir, inputs, callbacks)
    try:
        result, resumed_from = fit(trainer, workdir)
    finally:
        close_all(trainer.reward_funcs)
    history = [dict(entry) for entry in trainer.state.log_history]
    names = list(cfg.grpo.rewards)
    metrics = {
        **base_metrics(
            trainer,
            result,
            resumed_from,
            None,
            len(trainer.train_dataset),
            len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
        ),
        **reward_summary(history, names),
        "rewards": names,
    }
    usage = reward_usage(trainer)
    if usage:
        metrics[USAGE_KEY] = usage
    if SPEC.reads_rules(cfg):
        metrics["steps_with_failed_verdicts"] = steps_with_failed_verdicts(history)
    if trainer.is_world_process_zero():
        write_jsonl(workdir / LOG_HISTORY, history)
        if SPEC.reads_rules(cfg):
            table = rule_table(history, rules)
            write_json_redacted(workdir / RULE_TABLE, table)
            metrics["rules"] = len(table)
    save(trainer, workdir, metrics, keep_checkpoints=bool(cfg.grpo.keep_checkpoints))
    if cfg.grpo.lora_rank is not None:
        if trainer.is_world_process_zero():
            lora.merge_adapter(
                workdir, lambda: starting_policy(inputs["sft"] / MODEL), trainer.processing_class
            )
        trainer.accelerator.wait_for_everyone()
    return metrics


def starting_policy(folder: Path):
    """The policy training started from: the base of the LoRA merge."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto")
