"""Provenance: how an artifact was made (the package versions, the git commit, the command)."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from autorule.core.config import overrides_without

PACKAGES = (
    "autorule",
    "torch",
    "transformers",
    "trl",
    "datasets",
    "accelerate",
    "deepspeed",
    "tokenizers",
    "hydra-core",
    "boto3",
    "openai",
    "vllm",
)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_sha() -> str | None:
    """The commit of the autorule checkout in use (with ``-dirty`` when modified), if any."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def make_command(cfg: DictConfig, stage: str, drop: tuple[str, ...] = ("stage", "force")) -> str:
    """The command line that (re)makes ``stage`` with the overrides of the current run, less
    those whose top-level key is in ``drop``."""
    overrides = overrides_without(OmegaConf.select(cfg, "run.overrides") or [], drop)
    return " ".join(["python -m autorule", f"stage={stage}", *overrides])
