"""What the ``sft`` and ``rm`` stages do alike around their TRL trainer.

Builds the trainer arguments from the stage's config section, resumes from the last checkpoint in
the work folder, and writes the artifact's ``model/`` and ``metrics.json``. Checkpoints live in
``<work folder>/checkpoints`` while training (``save_total_limit`` of them, by default only the
last, which is all a resume needs) and are deleted once the final model is saved, so the
committed artifact holds one copy of the weights.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from autorule.training import (
    CHECKPOINTS,
    METRICS,
    MODEL,
    checkpoint_step,
    logging_kwargs,
    trainer_kwargs,
)

log = logging.getLogger(__name__)


def config_kwargs(cfg: DictConfig, stage: str, workdir: Path) -> dict[str, Any]:
    """Keyword arguments for ``SFTConfig`` / ``RewardConfig``; exports the tracker's variables.

    Gradient accumulation uses the number of processes actually running, so the global batch
    holds even when accelerate starts fewer workers than launcher.num_processes asked for (on a
    machine without GPUs it runs one).
    """
    from accelerate import PartialState

    world = PartialState().num_processes
    if world != int(cfg.launcher.num_processes):
        log.warning(
            "launcher.num_processes=%s but %d process(es) are running; gradient "
            "accumulation follows the running count",
            cfg.launcher.num_processes,
            world,
        )
    overrides = list(cfg.get("run", {}).get("overrides", []))
    tracking, env = logging_kwargs(cfg.logger, stage, overrides, str(cfg.profile.name))
    os.environ.update(env)
    kwargs = {
        "output_dir": str(workdir / CHECKPOINTS),
        **trainer_kwargs(cfg[stage], world),
        **tracking,
    }
    # transformers 5 renamed gradient_checkpointing (a deprecated alias until v6).
    from transformers import TrainingArguments

    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__:
        kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing")
    return kwargs


def fit(trainer, workdir: Path) -> tuple[Any, int | None]:
    """Trains, resuming from the latest ``checkpoint-*`` in the work folder when there is one."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = workdir / CHECKPOINTS
    last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    if last is not None:
        log.info("resuming from %s", last)
    return trainer.train(resume_from_checkpoint=last), checkpoint_step(last)


def final_train_loss(trainer) -> float | None:
    """The last training loss the trainer logged."""
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return float(losses[-1]) if losses else None


def save(trainer, workdir: Path, metrics: dict[str, Any]) -> None:
    """Saves ``model/`` (all ranks take part: ZeRO-3 gathers the weights) and ``metrics.json``
    from the main process, then drops the checkpoints."""
    trainer.save_model(str(workdir / MODEL))
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(workdir / MODEL))
        (workdir / METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(workdir / CHECKPOINTS, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


def base_metrics(
    trainer,
    result,
    resumed_from: int | None,
    eval_loss: float | None,
    train_rows: int,
    eval_rows: int,
) -> dict[str, Any]:
    """The metrics both training stages report."""
    return {
        "train_loss": final_train_loss(trainer),
        "train_loss_mean": float(result.training_loss),
        "eval_loss": eval_loss,
        "global_step": int(trainer.state.global_step),
        "resumed_from_step": resumed_from,
        "train_rows": train_rows,
        "eval_rows": eval_rows,
    }
