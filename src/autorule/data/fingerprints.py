"""Fingerprints of what a stage reads from outside ``paths.root``: datasets and tiny-model corpora.

A stage's artifact folder is named by its config hash. For inputs that live outside autorule's
artifacts the config alone is not enough: a local dataset folder can be edited in place, and two
clones of the repository keep the same bundled data under different absolute paths. So a local
folder is identified by its *content* (the sha256 of every file in it), and a hub dataset by its
id and pinned revision. Editing a local copy therefore gives a new artifact (and makes every
downstream stage out of date), while the same data read from two places shares one.

Hashing is memoised per process by (path, size, modification time), because every downstream
stage recomputes its upstream hashes to find their folders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

_MEMO: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    from autorule.core.hashing import file_sha256

    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _MEMO:
        _MEMO[key] = file_sha256(path)
    return _MEMO[key]


def folder_fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path, hidden files and folders aside
    (``.git``, ``.cache`` and lock files say nothing about the data)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                path = Path(root) / name
                out[path.relative_to(folder).as_posix()] = _file_sha256(path)
    return out


def folder_identity(folder: Path) -> dict[str, Any]:
    """A model folder's identity by content: its autorule artifact's content hash when it lies
    in one (cheap: read from the manifest), else the sha256 of its files."""
    from autorule.core.artifacts import read_manifest

    for parent in (folder, *folder.parents[:2]):
        manifest = read_manifest(parent)
        if manifest and manifest.get("artifact_hash"):
            return {"artifact": manifest["artifact_hash"], "sub": str(folder.relative_to(parent))}
    return {"files": folder_fingerprint(folder)}


def dataset_source(path: str, revision: str | None) -> dict[str, Any]:
    """What identifies the dataset at ``path``: file contents for a local folder, else the hub id
    and revision (an unpinned hub id follows the default branch; pin ``dataset.revision`` to make
    the artifact name a promise about the data)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return {"local_files": folder_fingerprint(local.resolve())}
    return {"hub_id": path, "revision": revision}


def preprocess_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """The external inputs of ``preprocess``: the dataset, and for the tiny model the corpus its
    tokenizer is trained on (the tokenizer decides the length filter)."""
    from autorule.data.models import TINY, tiny_corpus

    if cfg.dataset.get("sources") is not None:  # instruction sources: each identified on its own
        from autorule.data.sources import entries, location

        found_sources = {}
        for name, adapter, section in entries(cfg.dataset):
            where = location(cfg.dataset, adapter, section)
            found_sources[name] = (
                None if where is None else dataset_source(where, section.get("revision"))
            )
        return {"sources": found_sources}
    path = cfg.dataset.get("path")
    # A generated dataset (the addition demo) reads nothing: its settings are in the config hash.
    source = None if path is None else dataset_source(str(path), cfg.dataset.get("revision"))
    found: dict[str, Any] = {"dataset": source}
    if cfg.dataset.name == "uf" and str(cfg.model.name_or_path) == TINY:
        found["tiny_corpus"] = [_file_sha256(p) for p in tiny_corpus(cfg)]
    return found
