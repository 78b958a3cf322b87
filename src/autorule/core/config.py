"""Config composition shared by the command line and the tests.

``python -m autorule`` composes the config once with Hydra; tests compose the same config with
:func:`compose` and call stage functions directly. Either way :func:`finalize` attaches the
selected stage name (``cfg.stage``) and the command-line overrides (``cfg.run.overrides``, secrets
masked) so stages never need Hydra's globals.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from autorule.core.secrets import redact_override

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
REPO_ROOT = Path(__file__).resolve().parents[3]


def _register_resolvers() -> None:
    # ${repo:data} -> absolute path inside the autorule checkout (bundled data, confs).
    if not OmegaConf.has_resolver("repo"):
        OmegaConf.register_new_resolver("repo", lambda sub="": str(REPO_ROOT / sub))


_register_resolvers()


def finalize(cfg: DictConfig, stage: str, overrides: Sequence[str]) -> DictConfig:
    """Attaches the stage to run and the (redacted) overrides that produced this config."""
    with open_dict(cfg):
        cfg.stage = stage
        cfg.run = {"overrides": [redact_override(o) for o in overrides]}
    return cfg


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """Composes the autorule config as ``python -m autorule <overrides>`` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
    stage = cfg.hydra.runtime.choices.stage
    with open_dict(cfg):
        del cfg["hydra"]
    return finalize(cfg, stage, overrides)
