"""Writing files so that a reader never sees half of one, artifacts that hold no secret, and the
one JSON-lines reader and writer. Imports only :mod:`autorule.core.secrets` from autorule.

Every writer here writes a temporary file beside the target, then renames it into place
(``os.replace`` is atomic on POSIX file systems): a crash or a concurrent reader sees the old file
or the new one, never a torn one.

:func:`write_jsonl` and the ``*_redacted`` writers are the ones stages use for their artifacts'
files: LLM answers, call records and anything else that may quote a credential (a server that
echoes the request's ``Authorization`` header) pass :func:`~autorule.core.secrets.redact` on the
way to disk.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from autorule.core.secrets import redact, redact_text


def temporary_sibling(path: Path) -> Path:
    """A unique hidden name in ``path``'s folder (same file system, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def read_utf8(path: str | Path, what: str, error: type[Exception] = ValueError) -> str:
    """The text of ``path``; ``error`` naming ``what`` and the file when it is not UTF-8 (a
    binary file given by mistake), rather than a bare ``UnicodeDecodeError``."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{what} {path} is not UTF-8 text (byte {err.start}: {err.reason})") from None


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


# --------------------------------------------------------------------------------------------
# Artifact files: redacted, then written atomically


def write_text_redacted(path: str | Path, text: str) -> None:
    """Writes ``text`` (Markdown, YAML, any text) with secrets masked."""
    write_text_atomic(path, redact_text(text))


def write_json_redacted(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """Writes ``obj`` as JSON with secrets masked (keys sorted)."""
    write_json_atomic(path, redact(obj), indent=indent)


def redact_frame(frame: Any) -> Any:
    """A copy of a pandas DataFrame whose text cells (nested lists and dicts too) are redacted."""
    from pandas.api.types import is_object_dtype, is_string_dtype

    clean = frame.copy()
    for column in clean.columns:
        if is_object_dtype(clean[column]) or is_string_dtype(clean[column]):
            clean[column] = redact(clean[column].tolist())
    return clean


def write_parquet_redacted(path: str | Path, frame: Any) -> None:
    """Writes a pandas DataFrame as parquet (no index) with secrets masked."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        redact_frame(frame).to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
