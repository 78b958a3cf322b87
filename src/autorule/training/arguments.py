"""Pure helpers of the training stages (``sft``, ``rm``): config section -> trainer arguments.

Nothing here imports torch or TRL, so the dry run and the unit tests use the same code that the
trainers are built from. The stage files pass :func:`trainer_kwargs` and :func:`logging_kwargs`
straight into TRL's ``SFTConfig`` / ``RewardConfig``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autorule.core.config import ConfigError, check_choice, check_number, overrides_without

# Keys of a training section that change how the work runs (memory, speed, checkpoint and log
# cadence) but not the trained model; micro batch size is here because gradient accumulation keeps
# the global batch. Each training stage's SPEC ignores them (runtime_keys).
RUNTIME_KEYS = (
    "micro_batch_size",
    "eval_batch_size",
    "gradient_checkpointing",
    "deepspeed",
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "eval_steps",
)


def runtime_keys(stage: str) -> tuple[str, ...]:
    """:data:`RUNTIME_KEYS` under the section of training stage ``stage``."""
    return tuple(f"{stage}.{key}" for key in RUNTIME_KEYS)


CHECKPOINTS = "checkpoints"  # inside the stage's work folder; removed before the commit
MODEL = "model"  # inside the artifact: weights, config and tokenizer for from_pretrained
METRICS = "metrics.json"  # inside the artifact: final losses (and, for rm, the scores' statistics)

# Overrides that say where or how a run happens, not what it trains: left out of run names
# (``pipeline.stages=[...]`` only picks which stages run in one process).
_NOT_IN_RUN_NAME = (
    "stage",
    "pipeline",
    "force",
    "dry_run",
    "paths",
    "launcher",
    "logger",
    "hydra",
)


def grad_accumulation(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Micro batches each process accumulates so that one optimizer step sees ``global_batch``."""
    per_step = micro_batch * world_size
    if global_batch <= 0 or micro_batch <= 0 or world_size <= 0:
        raise ConfigError(
            f"batch sizes and world size must be positive, got global={global_batch} "
            f"micro={micro_batch} world={world_size}"
        )
    if global_batch % per_step:
        raise ConfigError(
            f"global_batch_size={global_batch} is not divisible by micro_batch_size={micro_batch} "
            f"x processes={world_size} (= {per_step}); change the global or micro batch size or "
            "launcher.num_processes"
        )
    return global_batch // per_step


def max_steps(section: Mapping[str, Any]) -> int:
    """The trainer's ``max_steps``: the section's value when > 0; otherwise -1, which makes
    the trainer run ``num_train_epochs`` (transformers reads 0 as "stop after one step")."""
    steps = int(section["max_steps"])
    return steps if steps > 0 else -1


def check_training(section: Mapping[str, Any], stage: str, world_size: int) -> None:
    """Refuses a training section's numbers that cannot work, naming ``<stage>.<key>`` and the
    allowed range, before any model is loaded."""

    def number(key: str, **allowed) -> None:
        if key in section:  # a trainer without the key (e.g. no evaluation) has nothing to check
            check_number(section[key], f"{stage}.{key}", **allowed)

    number("max_steps", meaning=" (> 0: train that many optimizer steps; <= 0: num_train_epochs)")
    number(
        "num_train_epochs",
        integer=False,
        low=0,
        low_open=True,
        meaning=f" (it sets the length while {stage}.max_steps <= 0)",
    )
    number("learning_rate", integer=False, low=0, low_open=True)
    for key in ("adam_beta1", "adam_beta2"):
        number(key, integer=False, low=0, high=1, high_open=True)
    number("adam_epsilon", integer=False, low=0, low_open=True)
    number("weight_decay", integer=False, low=0)
    number("warmup_ratio", integer=False, low=0, high=1, high_open=True)
    number("max_grad_norm", integer=False, low=0, low_open=True)
    if "max_length" in section:  # the trainers that read sequences (sft, rm); null: no limit
        number("max_length", low=1, none_ok=True)
    for key in ("global_batch_size", "micro_batch_size", "eval_batch_size"):
        number(key, low=1)
    number("save_steps", low=1)
    number("save_total_limit", low=1, none_ok=True)
    number("logging_steps", low=1)
    number("eval_steps", low=1, none_ok=True)
    number("seed")
    check_choice(section["precision"], f"{stage}.precision", ("bf16", "fp32"))
    global_batch, micro_batch = int(section["global_batch_size"]), int(section["micro_batch_size"])
    if global_batch % (micro_batch * world_size):
        raise ConfigError(
            f"{stage}.global_batch_size={global_batch} is not divisible by "
            f"{stage}.micro_batch_size={micro_batch} x launcher.num_processes={world_size} "
            f"(= {micro_batch * world_size}): it must be a multiple of that product, so that "
            "gradient accumulation makes up the global batch"
        )


def shared_kwargs(section: Mapping[str, Any], world_size: int) -> dict[str, Any]:
    """TrainingArguments fields every trainer takes (optimizer, schedule, batch, precision,
    checkpoints, logging), from a training stage's config section.

    ``warmup_ratio`` goes into ``warmup_steps``: transformers 5 reads a value below 1 as a share of
    the training steps. ``max_steps`` <= 0 means "train ``num_train_epochs``" (:func:`max_steps`).
    """
    if not 0 <= float(section["warmup_ratio"]) < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {section['warmup_ratio']}")
    if section["precision"] not in ("bf16", "fp32"):
        raise ValueError(f"precision must be bf16 or fp32, got {section['precision']!r}")
    eval_steps = section.get("eval_steps")
    return {
        # optimizer (AdamW) and schedule
        "learning_rate": float(section["learning_rate"]),
        "adam_beta1": float(section["adam_beta1"]),
        "adam_beta2": float(section["adam_beta2"]),
        "adam_epsilon": float(section["adam_epsilon"]),
        "weight_decay": float(section["weight_decay"]),
        "lr_scheduler_type": str(section["lr_scheduler_type"]),
        "warmup_steps": float(section["warmup_ratio"]),
        "max_grad_norm": float(section["max_grad_norm"]),
        "num_train_epochs": float(section["num_train_epochs"]),
        "max_steps": max_steps(section),
        # batch and precision
        "per_device_train_batch_size": int(section["micro_batch_size"]),
        "per_device_eval_batch_size": int(section["eval_batch_size"]),
        "gradient_accumulation_steps": grad_accumulation(
            int(section["global_batch_size"]), int(section["micro_batch_size"]), world_size
        ),
        "bf16": section["precision"] == "bf16",
        "gradient_checkpointing": bool(section["gradient_checkpointing"]),
        "seed": int(section["seed"]),
        # evaluation, checkpoints and logging
        "eval_strategy": "steps" if eval_steps else "no",
        "eval_steps": int(eval_steps) if eval_steps else None,
        "save_strategy": "steps",
        "save_steps": int(section["save_steps"]),
        "save_total_limit": int(section["save_total_limit"]),
        "logging_steps": int(section["logging_steps"]),
    }


def sequence_kwargs(section: Mapping[str, Any]) -> dict[str, Any]:
    """What SFTConfig and RewardConfig add: the longest tokenized sequence (None: no limit)."""
    max_length = section["max_length"]
    return {"max_length": None if max_length is None else int(max_length)}


def trainer_kwargs(
    section: Mapping[str, Any],
    world_size: int,
    own: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """All arguments of a stage's trainer config: :func:`shared_kwargs` plus the trainer's own
    (``own``: the stage's ``StageSpec.trainer_args``, e.g. :func:`sequence_kwargs`)."""
    return {**shared_kwargs(section, world_size), **(own(section) if own else {})}


def run_name(stage: str, overrides: Sequence[str]) -> str:
    """A tracker run name from the command-line overrides (already redacted), e.g.
    ``rm profile=paper rm.learning_rate=1e-5``; overrides about paths and launching are left out."""
    return " ".join([stage, *overrides_without(overrides, _NOT_IN_RUN_NAME)])


def logging_kwargs(
    logger: Mapping[str, Any], stage: str, overrides: Sequence[str], experiment_name: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """TrainingArguments fields for the tracker, and the environment variables it reads.

    W&B takes its project, entity and group from the environment (``WANDB_PROJECT`` ...), which
    transformers' callback does not set; the caller exports them before building the trainer. The
    group is ``logger.group`` when set, else ``experiment_name`` (each ``conf/experiment/*.yaml``
    sets its own), so the stages of one experiment group together.
    """
    report_to = list(logger.get("report_to") or [])
    env: dict[str, str] = {}
    if "wandb" in report_to:
        env["WANDB_PROJECT"] = str(logger.get("project") or "autorule")
        env["WANDB_RUN_GROUP"] = str(logger.get("group") or experiment_name)
        if logger.get("entity"):
            env["WANDB_ENTITY"] = str(logger["entity"])
    return {"report_to": report_to, "run_name": run_name(stage, overrides)}, env


def checkpoint_step(path: str | Path | None) -> int | None:
    """The step of a ``checkpoint-<step>`` folder (None for None)."""
    if path is None:
        return None
    match = re.fullmatch(r"checkpoint-(\d+)", Path(path).name)
    if not match:
        raise ValueError(f"not a checkpoint folder: {path}")
    return int(match.group(1))
