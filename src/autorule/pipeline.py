"""Dispatch: run the selected stage, or every stage of ``pipeline.stages`` in order.

With ``dry_run=true`` nothing runs and nothing is written: training stages print their launch
command and trainer arguments (:mod:`autorule.training.launch`); every other stage (whose work
would be hub downloads or paid LLM calls) is skipped here, and its command and artifact folder are
printed.

An input a stage finds under a config of its own (``StageSpec.input_configs``: the feedback
stage's and the oracle stage's samples) cannot be made by running the pipeline's stages in
order, so :func:`make_inputs` makes it first when it is missing or out of date, with whatever
it needs in turn under that config."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, open_dict

from autorule.core.artifacts import artifact_path, is_up_to_date, make_command
from autorule.core.config import check_paths
from autorule.core.stage import load

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


def check_stages(cfg: DictConfig, names: list[str]) -> None:
    """Runs every selected stage's ``check(cfg)`` (when its module has one) before any stage
    runs, so a bad number in the last stage of a pipeline is refused before the first one
    spends anything. Raises :class:`~autorule.core.config.ConfigError`."""
    check_paths(cfg)
    for name in names:
        check = getattr(load(name, cfg), "check", None)
        if check is not None:
            check(cfg)


def roles_in_use(cfg: DictConfig, name: str) -> list[str]:
    """The LLM roles stage ``name`` will call under ``cfg``: its module's ``roles_in_use(cfg)``
    when it has one (a role used only by some settings), else every role its spec declares."""
    module = load(name, cfg)
    pick = getattr(module, "roles_in_use", None)
    return list(pick(cfg)) if pick is not None else list(module.SPEC.llm_roles)


def probe_stages(cfg: DictConfig, names: list[str]) -> None:
    """One cheap reachability probe per served LLM role the selected stages will call (stages
    whose artifact is already up to date call none), before any stage runs: a dead judge is
    named with its URL now, not after the models have loaded. Raises
    :class:`~autorule.llm.base.UnreachableError`."""
    from autorule import llm as llms

    probed: set[str] = set()
    for name in names:
        roles = [r for r in roles_in_use(cfg, name) if r not in probed]
        if not roles:
            continue
        try:
            current = is_up_to_date(cfg, name)[0] and not cfg.get("force")
        except Exception:  # noqa: BLE001 - inputs not made yet: the stage will run
            current = False
        if not current:
            llms.probe_roles(cfg, roles)
            probed.update(roles)


def make_inputs(cfg: DictConfig, name: str) -> None:
    """Makes the inputs of stage ``name`` found under a config of their own
    (``StageSpec.input_configs``) when they are not complete and current, each with its own
    missing inputs first (:func:`make`)."""
    spec = load(name, cfg).SPEC
    for upstream in spec.inputs_for(cfg):
        if upstream in spec.input_configs:
            make(spec.config_for_input(cfg, upstream), upstream)


def make(cfg: DictConfig, name: str) -> Path:
    """Stage ``name``'s artifact under ``cfg``: reused when complete and current, else made
    after whatever of its own inputs is missing."""
    path = artifact_path(cfg, name)
    if is_up_to_date(cfg, name, path)[0]:
        return path
    module = load(name, cfg)
    for upstream in module.SPEC.inputs_for(cfg):
        make(module.SPEC.config_for_input(cfg, upstream), upstream)
    log.info("[pipeline] making the input %s first: %s", name, make_command(cfg, name))
    with open_dict(cfg):
        cfg.stage = name
    return module.run(cfg)


def run_stage(cfg: DictConfig) -> dict[str, Path]:
    """Runs ``cfg.stage`` (a stage name or ``pipeline``); returns stage name -> artifact folder."""
    banner(cfg)
    names = list(cfg.pipeline.stages) if cfg.stage == "pipeline" else [cfg.stage]
    dry_run = bool(cfg.get("dry_run"))
    modules = {name: load(name, cfg) for name in names}  # an unknown name fails before any work
    check_stages(cfg, names)
    if not dry_run:
        probe_stages(cfg, names)
    done: dict[str, Path] = {}
    for name, module in modules.items():
        with open_dict(cfg):
            cfg.stage = name
        # Training stages honour dry_run themselves (autorule.training.launch.run_training).
        if dry_run and not module.SPEC.trains:
            print(dry_run_note(cfg, name), flush=True)
            done[name] = artifact_path(cfg, name)
        else:
            make_inputs(cfg, name)
            done[name] = module.run(cfg)
    suffix = " (dry run, nothing written)" if dry_run else ""
    for name, path in done.items():
        print(f"[autorule] {name}: {path}{suffix}", flush=True)
    return done
