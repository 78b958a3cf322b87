"""Manifests: reading them, checking the files they list, and whether an artifact is up to date.

An artifact is *up to date* when its manifest is complete, its config hash matches, every file the
manifest lists is there with its recorded size (with ``verify=true``, its recorded sha256 too),
it is not marked ``provisional`` (a stand-in, or a result with failed LLM calls), and every
upstream artifact it read still has the content hash recorded in ``inputs`` (so recomputing an
upstream stage into different content makes its downstream stages out of date). A manifest that
cannot be read, whatever it holds, counts as no manifest: the stage recomputes the artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autorule.core.hashing import file_sha256
from autorule.core.identity import MANIFEST, artifact_path, config_hash


def read_manifest(folder: Path) -> dict | None:
    """The manifest in ``folder``, or None when there is none or it cannot be read.

    Unreadable means anything but what :meth:`StageJob.commit` writes: not UTF-8 JSON, not a
    mapping, or a complete manifest without the fields the contract relies on (``[1, 2]``, random
    bytes, ``{"status": "complete"}``). Such a folder is treated as holding no artifact, so the
    stage recomputes it (``force=true`` or not) instead of failing on the manifest.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_bytes())
    except (OSError, ValueError, RecursionError):  # ValueError: not UTF-8, not JSON
        return None
    return manifest if _well_formed(manifest) else None


def _is_str_map(obj: Any, value_type: type | tuple[type, ...] = str) -> bool:
    return isinstance(obj, dict) and all(
        isinstance(k, str) and isinstance(v, value_type) and not isinstance(v, bool)
        for k, v in obj.items()
    )


def _well_formed(manifest: Any) -> bool:
    """Whether ``manifest`` has the shape :meth:`StageJob._manifest` gives it."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("status"), str):
        return False
    if manifest["status"] != "complete":
        return True  # a work folder's "running" manifest: only its status is ever read
    inputs = manifest.get("inputs", {})
    return (
        isinstance(manifest.get("config_hash"), str)
        and isinstance(manifest.get("artifact_hash"), str)
        and _is_str_map(manifest.get("files"))
        and _is_str_map(manifest.get("sizes", {}), int)
        and _is_str_map(manifest.get("counts", {}), int)
        and isinstance(inputs, dict)
        and all(_is_str_map(v) and {"path", "hash"} <= v.keys() for v in inputs.values())
    )


def check_files(folder: Path, manifest: dict, verify: bool = False) -> str | None:
    """None when every file ``manifest`` lists is in ``folder`` with its recorded size (and,
    with ``verify``, its recorded sha256); otherwise which file is wrong and how.

    Sizes cost one ``stat`` per file and catch truncated or half-copied files; hashes read every
    byte (figures in docs/benchmarks.md) and catch same-size corruption too. Manifests written
    before sizes were recorded are checked for the files' presence (and hashes with ``verify``).
    """
    sizes = manifest.get("sizes", {})
    for relpath, sha in manifest["files"].items():
        path = folder / relpath
        try:
            size = path.stat().st_size
        except OSError:
            return f"file {relpath} is missing"
        if relpath in sizes and size != sizes[relpath]:
            return (
                f"file {relpath} is corrupted: it has {size} bytes where the manifest "
                f"recorded {sizes[relpath]}"
            )
        if verify and file_sha256(path) != sha:
            return f"file {relpath} is corrupted: its sha256 differs from the manifest's"
    return None


def verify_hashes(cfg: DictConfig) -> bool:
    """Whether ``verify=true`` asks for content hashes to be checked on reuse."""
    return bool(OmegaConf.select(cfg, "verify", default=False))


def is_complete(manifest: dict | None) -> bool:
    """Whether a manifest (from :func:`read_manifest`) marks its artifact complete."""
    return manifest is not None and manifest.get("status") == "complete"


def is_up_to_date(cfg: DictConfig, stage: str, folder: Path | None = None) -> tuple[bool, str]:
    """Whether ``stage``'s artifact is complete and current; the second value says why not."""
    folder = folder or artifact_path(cfg, stage)
    manifest = read_manifest(folder)
    if manifest is None:
        return False, "no artifact yet"
    if manifest.get("status") != "complete":
        return False, f"artifact status is {manifest.get('status')!r}"
    if manifest.get("config_hash") != config_hash(cfg, stage):
        return False, "config changed"
    if manifest.get("provisional"):
        # e.g. fallback rules committed because the LLM gave none: a later run with a working
        # endpoint must not find nothing to do.
        return False, "the artifact is provisional (a stand-in for results the run could not get)"
    problem = check_files(folder, manifest, verify_hashes(cfg))
    if problem:
        return False, problem
    for name, recorded in manifest.get("inputs", {}).items():
        current = read_manifest(Path(recorded["path"]))
        if current is not None and current.get("artifact_hash") != recorded["hash"]:
            return False, f"upstream '{name}' was recomputed"
    return True, "complete and up to date"
