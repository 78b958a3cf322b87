"""A persistent on-disk cache of LLM responses, one JSON file per request.

The key is a sha256 over the full request (backend, model, messages, generation parameters), so
a re-run after a crash or Ctrl-C replays every call that finished and pays only for the rest, and
any change to a prompt or parameter misses the cache. Files live in
``<folder>/<key[:2]>/<key>.json`` (the two-level fan-out keeps folders small at tens of thousands
of calls). Each file is written to a temporary name and renamed into place, so a reader never
sees a half-written entry and concurrent writers of the same key are harmless. Failed calls are
never cached.

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
import os
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class ResponseCache:
    """Maps request keys to stored responses (plain JSON objects)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored response for ``key``, or None (a corrupt entry counts as missing)."""
        path = self.path(key)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as err:
            log.warning("ignoring unreadable LLM cache entry %s: %s", path, err)
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Stores ``value`` under ``key`` atomically (write to a temporary file, then rename)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_text(json.dumps(value, ensure_ascii=False, sort_keys=True))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
