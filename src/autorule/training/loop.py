"""What the ``sft`` and ``rm`` stages do alike around their TRL trainer.

Builds the trainer arguments from the stage's config section, resumes from the newest complete
checkpoint in the work folder (one a killed job left half-written is removed), writes the
artifact's ``model/`` and ``metrics.json``, and closes the tracker's run. Checkpoints live in
``<work folder>/checkpoints`` while training (``save_total_limit`` of them, by default only the
last, which is all a resume needs) and are deleted once the final model is saved, so the
committed artifact holds one copy of the weights.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from autorule.core.files import write_json_redacted
from autorule.core.stage import get_spec
from autorule.training.arguments import (
    CHECKPOINTS,
    METRICS,
    MODEL,
    checkpoint_step,
    logging_kwargs,
    trainer_kwargs,
)

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"  # transformers' TRAINER_STATE_NAME, written last


def config_kwargs(
    cfg: DictConfig, stage: str, workdir: Path, section: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``SFTConfig`` / ``RewardConfig``; exports the tracker's variables.

    ``section``: the training settings when they are not ``cfg[stage]`` (a stage that trains in
    phases, each with settings of its own).

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
    tracking, env = logging_kwargs(cfg.logger, stage, overrides, str(cfg.experiment_name))
    os.environ.update(env)
    kwargs = {
        "output_dir": str(workdir / CHECKPOINTS),
        **trainer_kwargs(
            cfg[stage] if section is None else section, world, get_spec(stage, cfg).trainer_args
        ),
        **tracking,
    }
    # transformers 5 renamed gradient_checkpointing (a deprecated alias until v6).
    from transformers import TrainingArguments

    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__:
        kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing")
    return kwargs


def last_complete_checkpoint(folder: Path, remove_incomplete: bool = True) -> Path | None:
    """The newest complete ``checkpoint-<step>`` in ``folder`` (None when there is none).

    A checkpoint is complete when its ``trainer_state.json`` exists and parses:
    ``Trainer._save_checkpoint`` writes it last (after weights, optimizer, scheduler and RNG
    states), and not atomically. A job killed while saving leaves a folder without it, which
    transformers' ``get_last_checkpoint`` would still pick, failing every re-run with "Can't find a
    valid checkpoint". Incomplete folders are logged and, with ``remove_incomplete``, deleted.
    """
    if not folder.is_dir():
        return None
    found = sorted(
        (step, path)
        for path in folder.iterdir()
        if path.is_dir() and (step := _step_or_none(path)) is not None
    )
    complete = [path for _, path in found if _has_trainer_state(path)]
    for _, path in found:
        if path not in complete:
            action = "removing" if remove_incomplete else "skipping"
            log.warning(
                "incomplete checkpoint %s (no valid %s): %s it", path, TRAINER_STATE, action
            )
            if remove_incomplete:
                shutil.rmtree(path, ignore_errors=True)
    return complete[-1] if complete else None


def _step_or_none(path: Path) -> int | None:
    try:
        return checkpoint_step(path)
    except ValueError:
        return None


def _has_trainer_state(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return False
    return True


def fit(trainer, workdir: Path) -> tuple[Any, int | None]:
    """Trains, resuming from the newest complete ``checkpoint-*`` in the work folder if any."""
    # Every process picks the same folder; only the main one deletes (the work folder is shared).
    last = last_complete_checkpoint(
        workdir / CHECKPOINTS, remove_incomplete=trainer.is_world_process_zero()
    )
    if last is not None:
        log.info("resuming from %s", last)
    result = trainer.train(resume_from_checkpoint=str(last) if last is not None else None)
    return result, checkpoint_step(last)


def finish_tracker(failed: bool = False) -> None:
    """Closes the open W&B run, if any, so the next training stage in this process gets its own.

    transformers' ``WandbCallback`` logs into ``wandb.run`` whenever one is open instead of
    starting a run with the stage's name and group, so without this ``stage=pipeline`` would log
    rm into sft's run. wandb is only looked up, never imported: runs without it stay free of it.
    """
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


def final_train_loss(trainer) -> float | None:
    """The last training loss the trainer logged."""
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return float(losses[-1]) if losses else None


# What a kept checkpoint needs to be loaded as a model (with from_pretrained); the rest of a
# checkpoint (optimizer, scheduler and RNG states, DeepSpeed shards) only serves resuming.
_RESUME_ONLY = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state")


def keep_models_only(checkpoints: Path) -> None:
    """Strips every ``checkpoint-<step>/`` of what only resuming needs, keeping the weights,
    config and tokenizer (``keep_checkpoints``: the evaluation's reward-hacking curve)."""
    for folder in sorted(checkpoints.glob("checkpoint-*")):
        for path in list(folder.iterdir()):
            if path.is_dir():  # DeepSpeed's global_step* optimizer shards
                shutil.rmtree(path, ignore_errors=True)
            elif path.name.startswith(_RESUME_ONLY):
                path.unlink()


def save(trainer, workdir: Path, metrics: dict[str, Any], keep_checkpoints: bool = False) -> None:
    """Saves ``model/`` (all ranks take part: ZeRO-3 gathers the weights) and ``metrics.json``
    from the main process, then drops the checkpoints (or, with ``keep_checkpoints``, keeps
    their models and drops only what resuming needed)."""
    trainer.save_model(str(workdir / MODEL))
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(workdir / MODEL))
        write_json_redacted(workdir / METRICS, metrics)
        if keep_checkpoints:
            keep_models_only(workdir / CHECKPOINTS)
        else:
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
    """The metrics both training stages report.

    ``train_loss_mean`` is transformers' ``training_loss``: the mean over the optimizer steps run
    in this process only, so after a resume it leaves out the steps before ``resumed_from_step``.
    ``train_loss_mean_steps`` says how many steps it covers (``global_step`` unless resumed).
    """
    step = int(trainer.state.global_step)
    return {
        "train_loss": final_train_loss(trainer),
        "train_loss_mean": float(result.training_loss),
        "train_loss_mean_steps": step - (resumed_from or 0),
        "eval_loss": eval_loss,
        "global_step": step,
        "resumed_from_step": resumed_from,
        "train_rows": train_rows,
        "eval_rows": eval_rows,
    }
