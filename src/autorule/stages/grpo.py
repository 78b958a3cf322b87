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

What it reads: the preprocess and sft artifacts always; the rm artifact when the ``rm`` term is
used (its model and its score statistics); the rule set when the ``rules`` term is used (the
extract artifact, or ``rules.path``: recorded and hashed like any input).

Artifact: ``model/`` (the trained policy, ``from_pretrained`` loads it), ``metrics.json`` (each
reward term's mean at the first and at the last logging step, losses, steps),
``rule_satisfaction.json`` (each rule's text and its satisfaction rate at the first and at the last
logging step, when the ``rules`` term is used), ``log_history.jsonl`` (every logged step:
reward terms, per-rule rates, KL, lengths) and the manifest. Resuming and multi-GPU launching
work as for ``sft`` (:mod:`autorule.training.launch`).

TRL differs from the released (OpenRLHF) setup in a few places; ``docs/rewards.md`` lists them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from autorule.core.config import ConfigError, check_choice, check_number, check_paths
from autorule.core.stage import StageSpec
from autorule.training.arguments import MODEL, check_training, runtime_keys
from autorule.training.launch import check_launcher, run_training, world_size

log = logging.getLogger(__name__)

RULE_TABLE = "rule_satisfaction.json"
LOG_HISTORY = "log_history.jsonl"


def uses_term(cfg: Any, name: str) -> bool:
    return name in list(cfg.grpo.rewards)


def unused_reward_settings(cfg: Any) -> tuple[str, ...]:
    """Settings of reward terms this run does not use, and the judge when no term needs it:
    left out of the hash, so the baseline's artifact ignores the judge's model."""
    used = set(cfg.grpo.rewards)
    keys = [
        f"rewards.{name}"
        for name, value in (cfg.get("rewards") or {}).items()
        if name not in used and isinstance(value, Mapping)
    ]
    if "rules" not in used:
        keys.append("judge")
    return tuple(keys)


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

SPEC = StageSpec(
    name="grpo",
    inputs=("preprocess", "sft", "rm", "cloud"),
    only_if={
        "rm": lambda cfg: uses_term(cfg, "rm"),
        # The cloud term reads this config's cloud artifact unless rewards.cloud.model names one.
        "cloud": lambda cfg: uses_term(cfg, "cloud") and not cfg.rewards.cloud.model,
    },
    uses_rules=lambda cfg: uses_term(cfg, "rules"),
    keys=("grpo", "rewards", "judge", "model.name_or_path", "model.tiny", "model.pad_token"),
    ignore=_RUNTIME,
    ignore_when=unused_reward_settings,
    llm_roles=("judge.llm",),
    trains=True,
    resumable=True,
    trainer_args=trainer_args,
)


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before any model is loaded or any judge is called."""
    from autorule.rewards.registry import REWARDS

    check_paths(cfg)
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


def run(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> Path:
    check(cfg)
    return run_training(cfg, SPEC.name, train, callbacks, describe=describe)


def describe(cfg: DictConfig) -> list[str]:
    """The dry run's lines on the reward terms and the rollout arithmetic."""
    section = cfg.grpo
    weights = section.reward_weights or [1.0] * len(section.rewards)
    terms = ", ".join(f"{n} x {w}" for n, w in zip(section.rewards, weights, strict=True))
    lines = [
        f"rewards: {terms}",
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
    return lines


def prompt_dataset(parquet: Path, limit: int | None):
    """A ``datasets.Dataset`` with one ``prompt`` column (the formatted prompts)."""
    import datasets

    prompts = pd.read_parquet(parquet, columns=["formatted_prompt"])["formatted_prompt"]
    prompts = prompts.drop_duplicates()
    if limit is not None:
        prompts = prompts.head(int(limit))
    return datasets.Dataset.from_dict({"prompt": prompts.tolist()})


def reward_context(cfg: DictConfig, inputs: dict[str, Path], tokenizer):
    """What the reward terms need: the rm artifact, the rule set, the policy's tokenizer."""
    from autorule.rewards.registry import RewardContext
    from autorule.rules.ruleset import load_rules

    rules = load_rules(cfg, inputs) if SPEC.reads_rules(cfg) else []
    return RewardContext(cfg=cfg, rm_folder=inputs.get("rm"), rules=rules, tokenizer=tokenizer)


def build_trainer(
    cfg: DictConfig, workdir: Path, inputs: dict[str, Path], callbacks: Sequence[Any] = ()
):
    from trl import GRPOConfig, GRPOTrainer

    from autorule.data.model_paths import load_tokenizer
    from autorule.rewards.registry import build_reward_funcs
    from autorule.training.loop import config_kwargs

    section = cfg.grpo
    if section.use_vllm:
        from autorule.llm.vllm_offline import import_vllm

        import_vllm()  # a clear install hint rather than TRL's error deep inside the trainer
    policy = str(inputs["sft"] / MODEL)
    tokenizer = load_tokenizer(cfg, name_or_path=policy)
    dataset = prompt_dataset(
        inputs["preprocess"] / f"{section.prompt_split}.parquet", section.max_prompts
    )
    context = reward_context(cfg, inputs, tokenizer)
    funcs = build_reward_funcs(list(section.rewards), context)
    args = GRPOConfig(**config_kwargs(cfg, SPEC.name, workdir))
    # Each term hands its own metrics (per-rule satisfaction, judge failures) to TRL's
    # log_metric, so every tracker and log_history get them at each logging step.
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    return trainer, context.rules


def first_and_last(history: list[dict], key: str) -> tuple[float | None, float | None]:
    """The first and the last logged value of ``key``."""
    values = [entry[key] for entry in history if entry.get(key) is not None]
    return (values[0], values[-1]) if values else (None, None)


def reward_summary(history: list[dict], names: Sequence[str]) -> dict[str, Any]:
    """Each term's mean reward, and the total, at the first and the last logging step."""
    out: dict[str, Any] = {}
    for name in names:
        start, end = first_and_last(history, f"rewards/{name}/mean")
        out[f"reward_{name}_start"], out[f"reward_{name}_end"] = start, end
    out["reward_start"], out["reward_end"] = first_and_last(history, "reward")
    return out


def rule_table(history: list[dict], rules: Sequence[str]) -> list[dict[str, Any]]:
    """One row per rule: its text and satisfaction rate at the first and last logging step."""
    rows = []
    for index, rule in enumerate(rules):
        start, end = first_and_last(history, f"rules/{index}")
        rows.append({"index": index, "rule": rule, "start": start, "end": end})
    return rows


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
        **base_metrics(trainer, result, resumed_from, None, len(trainer.train_dataset), 0),
        **reward_summary(history, names),
        "rewards": names,
    }
    if trainer.is_world_process_zero():
        with open(workdir / LOG_HISTORY, "w") as f:
            for entry in history:
                f.write(json.dumps(entry, sort_keys=True) + "\n")
        if SPEC.reads_rules(cfg):
            table = rule_table(history, rules)
            (workdir / RULE_TABLE).write_text(json.dumps(table, indent=2) + "\n")
            metrics["rules"] = len(table)
    save(trainer, workdir, metrics, keep_checkpoints=bool(cfg.grpo.keep_checkpoints))
    return metrics
