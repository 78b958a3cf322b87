"""A persistent on-disk cache of LLM responses, one JSON file per request.

The key is a sha256 over the full request (backend, model, messages, generation parameters), so
a re-run after a crash or Ctrl-C replays every call that finished and pays only for the rest, and
any change to a prompt or parameter misses the cache. Files live in
``<folder>/<key[:2]>/<key>.json`` (the two-level fan-out keeps folders small at tens of thousands
of calls). Each file is written to a temporary name and renamed into place, so a reader never
sees a half-written entry and concurrent writers of the same key are harmless. Failed calls and
unusable answers (empty, not valid Unicode: :func:`autorule.llm.base.check_usable`) are never
cached. An entry that cannot be read back as an answer (random bytes, ``{}``, a list, no text)
counts as missing, with one warning per entry, and is overwritten when the request is answered
again. Entries pass :func:`autorule.core.secrets.redact` on their way to disk.

Note that a sampled answer (temperature > 0) is cached like any other: the same request made twice
gets the same answer. That is what makes re-runs reproducible.

Where the request is sent (``llm.base_url``, ``llm.endpoint_url``, ``llm.region``) is deliberately
not part of the key: a vLLM server restarted on another node or port (every SLURM job gets new
ones) or a Bedrock model reached through a VPC endpoint still answers as the same model, and its
cached answers stay valid. The model name is what identifies the weights, so two servers that
serve *different* weights under the same name would share answers: give them different names
(``vllm serve --served-model-name``) or separate ``llm.cache_dir`` folders.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from autorule.core.files import write_bytes_atomic
from autorule.core.secrets import redact

log = logging.getLogger(__name__)

# Fields of a stored answer and the types they must have (autorule.llm.base.Completion's).
_FIELDS = {
    "text": str,
    "reasoning": str,
    "input_tokens": int,
    "output_tokens": int,
    "latency_s": (int, float),
    "retries": int,
}


def _problem(entry: Any) -> str | None:
    """Why ``entry`` is not a usable stored answer, or None."""
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an object"
    if not isinstance(entry.get("text"), str):
        return "no answer text"
    for name, kind in _FIELDS.items():
        if name in entry and (not isinstance(entry[name], kind) or isinstance(entry[name], bool)):
            return f"{name} is not a {getattr(kind, '__name__', 'number')}"
    if not entry["text"].strip() and not str(entry.get("reasoning", "")).strip():
        return "an empty answer"
    return None


class ResponseCache:
    """Maps request keys to stored responses (plain JSON objects)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        self._reported: set[Path] = set()  # corrupt entries already warned about
        self._lock = threading.Lock()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored response for ``key``, or None (a corrupt entry counts as missing)."""
        path = self.path(key)
        try:
            entry = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as err:  # ValueError: not UTF-8, not JSON
            self._warn(path, f"unreadable ({type(err).__name__})")
            return None
        problem = _problem(entry)
        if problem:
            self._warn(path, problem)
            return None
        return entry

    def _warn(self, path: Path, why: str) -> None:
        with self._lock:
            if path in self._reported:
                return
            self._reported.add(path)
        log.warning("ignoring corrupt LLM cache entry %s (%s); asking again", path, why)

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Stores ``value`` (redacted) under ``key`` atomically: written to a temporary file,
        then renamed. A value that cannot be encoded is logged and skipped, not raised: the
        answer is still in hand, only a re-run would pay for it again."""
        path = self.path(key)
        try:
            data = json.dumps(redact(value), ensure_ascii=False, sort_keys=True).encode("utf-8")
        except ValueError as err:  # UnicodeEncodeError (a lone surrogate) is a ValueError
            log.warning("not caching an LLM answer for %s: %s", path, err)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)
