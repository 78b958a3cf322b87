"""Writing files so that a reader never sees half of one, and the one JSON-lines reader and
writer. Imports only :mod:`autorule.core.secrets` from autorule.

Every writer here writes a temporary file beside the target, then renames it into place
(``os.replace`` is atomic on POSIX file systems): a crash or a concurrent reader sees the old file
or the new one, never a torn one. The JSON-lines writer also masks secrets in every row.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from autorule.core.secrets import redact


def temporary_sibling(path: Path) -> Path:
    """A unique hidden name in ``path``'s folder (same file system, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """Writes ``obj`` as JSON (keys sorted) to ``path`` atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=True, default=str, ensure_ascii=False)
    write_text_atomic(path, text + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Writes one JSON line per row, each with its secrets masked (:func:`redact`), atomically;
    returns the number of rows."""
    path = Path(path)
    tmp = temporary_sibling(path)
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(redact(row), ensure_ascii=False, default=str) + "\n")
                count += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def read_jsonl(path: str | Path) -> list[Any]:
    """The rows of a JSON-lines file (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def rename_dir_atomic(tmp: Path, final: Path) -> bool:
    """Renames the folder ``tmp`` to ``final``; False when another process got there first
    (``final`` exists and is not empty), in which case ``tmp`` is left for the caller to remove."""
    try:
        os.rename(tmp, final)
    except OSError:
        if final.is_dir() and any(final.iterdir()):
            return False
        raise
    return True
