"""Dispatch: run the selected stage, or every stage of ``pipeline.stages`` in order."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, open_dict

from autorule import stages

log = logging.getLogger(__name__)


def banner(cfg: DictConfig) -> str:
    line = f"[autorule] {cfg.profile.banner}"
    print(line, file=sys.stderr, flush=True)
    return line


def run_stage(cfg: DictConfig) -> dict[str, Path]:
    """Runs ``cfg.stage`` (a stage name or ``pipeline``); returns stage name -> artifact folder."""
    banner(cfg)
    names = list(cfg.pipeline.stages) if cfg.stage == "pipeline" else [cfg.stage]
    done: dict[str, Path] = {}
    for name in names:
        module = stages.load(name)
        with open_dict(cfg):
            cfg.stage = name
        done[name] = module.run(cfg)
    for name, path in done.items():
        print(f"[autorule] {name}: {path}", flush=True)
    return done
