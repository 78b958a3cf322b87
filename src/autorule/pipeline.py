"""Dispatch: run the selected stage, or every stage of ``pipeline.stages`` in order, after making
the inputs a stage declares under a config of its own when they are missing or out of date.

A stage's inputs under the run's own config are the user's to make (``stage=pipeline`` makes them
in order; a stage started too early fails naming the command). An input a stage finds under a
config of its own (``StageSpec.input_configs``: the feedback and oracle stages' samples,
feedback_eval's reward model and picks of each protocol) cannot be made by running the
pipeline's stages in order: :func:`missing_inputs` finds it, with whatever it needs in turn under
that config, and :func:`run_stage` makes them first, so stages never run each other.

With ``dry_run=true`` nothing runs and nothing is written: training stages print their launch
command and trainer arguments (:mod:`autorule.training.launch`); every other stage (whose work
would be hub downloads or paid LLM calls) is skipped here, and its command and artifact folder are
printed; so are the inputs that would be made first."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, open_dict

from autorule.core.artifacts import (
    artifact_path,
    is_up_to_date,
    make_command,
)
from autorule.core.config import check_paths
from autorule.core.stage import get_spec, load

log = logging.getLogger(__name__)

# Overrides that do not belong in the command that runs one stage for real.
_NOT_IN_STAGE_COMMAND = ("stage", "dry_run", "pipeline")


def banner(cfg: DictConfig) -> str:
    line = f"[autorule] {cfg.profile.banner}"
    print(line, file=sys.stderr, flush=True)
    return line


def dry_run_note(cfg: DictConfig, name: str) -> str:
    """What running non-training stage ``name`` would do; it has no dry run of its own."""
    path = artifact_path(cfg, name)
    fresh, reason = is_up_to_date(cfg, name, path)
    if fresh and not cfg.get("force"):
        state = "exists and is up to date: the run would do nothing"
    elif fresh:
        state = "exists; force=true: the run would recompute it"
    else:
        state = f"{reason}: the run would make it"
    return "\n".join(
        [
            f"[autorule] dry run: stage {name} not run (it has no dry run); it would run",
            f"  {make_command(cfg, name, drop=_NOT_IN_STAGE_COMMAND)}",
            f"  artifact {path} ({state})",
        ]
    )


def derived_inputs(cfg: DictConfig, name: str) -> list[tuple[str, DictConfig]]:
    """(stage, config) of each input ``name`` reads under a config of its own, and theirs in
    turn (whether their artifacts exist or not)."""
    spec = get_spec(name, cfg)
    found = []
    for input_name in spec.inputs_for(cfg):
        if input_name in spec.input_configs:
            stage, input_cfg = spec.stage_of(input_name), spec.config_for_input(cfg, input_name)
            found += [(stage, input_cfg), *derived_inputs(input_cfg, stage)]
    return found


def check_stages(cfg: DictConfig, names: list[str]) -> None:
    """Runs every selected stage's ``check(cfg)`` (when its module has one), and that of the
    inputs each one derives a config for, under that config, before any stage runs, so a bad
    number in the last stage of a pipeline is refused before the first one spends anything.
    Raises :class:`~autorule.core.config.ConfigError`."""
    check_paths(cfg)
    for name in names:
        for stage, stage_cfg in [(name, cfg), *derived_inputs(cfg, name)]:
            check = getattr(load(stage, stage_cfg), "check", None)
            if check is not None:
                check(stage_cfg)


def missing_inputs(cfg: DictConfig, name: str) -> list[tuple[str, DictConfig]]:
    """(stage, config) of each artifact to make before ``name`` runs under ``cfg``, in the order
    to make them: the inputs it declares under a config of their own that are not complete and
    up to date, each after whatever of its own inputs is not (under that config)."""
    spec = get_spec(name, cfg)
    plan: list[tuple[str, DictConfig]] = []
    seen: set[Path] = set()
    for input_name in spec.inputs_for(cfg):
        if input_name in spec.input_configs:
            stage = spec.stage_of(input_name)
            plan += _needed(spec.config_for_input(cfg, input_name), stage, seen)
    return plan


def _needed(cfg: DictConfig, stage: str, seen: set[Path]) -> list[tuple[str, DictConfig]]:
    """``stage`` under ``cfg`` and what it needs first, unless it is up to date (or planned)."""
    path = artifact_path(cfg, stage)
    if path in seen or is_up_to_date(cfg, stage, path)[0]:
        return []
    seen.add(path)
    spec = get_spec(stage, cfg)
    plan: list[tuple[str, DictConfig]] = []
    for input_name in spec.inputs_for(cfg):
        plan += _needed(spec.config_for_input(cfg, input_name), spec.stage_of(input_name), seen)
    return [*plan, (stage, cfg)]


def run_one(cfg: DictConfig, name: str, dry_run: bool) -> Path:
    """Runs stage ``name`` under ``cfg`` (a dry run prints what it would do)."""
    module = load(name, cfg)
    # Training stages honour dry_run themselves (autorule.training.launch.run_training).
    if dry_run and not module.SPEC.trains:
        print(dry_run_note(cfg, name), flush=True)
        return artifact_path(cfg, name)
    return module.run(cfg)


def run_stage(cfg: DictConfig) -> dict[str, Path]:
    """Runs ``cfg.stage`` (a stage name or ``pipeline``); returns stage name -> artifact folder."""
    banner(cfg)
    names = list(cfg.pipeline.stages) if cfg.stage == "pipeline" else [cfg.stage]
    dry_run = bool(cfg.get("dry_run"))
    for name in names:
        load(name, cfg)  # an unknown name fails before any work
    check_stages(cfg, names)
    done: dict[str, Path] = {}
    for name in names:
        with open_dict(cfg):
            cfg.stage = name
        for stage, input_cfg in missing_inputs(cfg, name):
            log.info("[pipeline] %s needs the %s artifact: making it first", name, stage)
            with open_dict(input_cfg):
                input_cfg.stage = stage
            run_one(input_cfg, stage, dry_run)
        done[name] = run_one(cfg, name, dry_run)
    suffix = " (dry run, nothing written)" if dry_run else ""
    for name, path in done.items():
        print(f"[autorule] {name}: {path}{suffix}", flush=True)
    return done
