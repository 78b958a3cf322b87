"""The reward server's score log, and the training log grpo on OpenRLHF builds from it.

OpenRLHF 0.6.4 (the pinned runtime) reads only ``rewards`` from the server's answers, so the
curves of each reward term and each rule's satisfaction exist only on the server's side. While
it serves, the server appends one row per scored batch to
``<reward_server artifact>/sessions/<UTC start>-<pid>/scores.jsonl`` (:class:`SessionLog`):
wall-clock ``time`` (Unix seconds), ``completions``, the batch's mean total ``reward``, each
term's mean as ``rewards/<term>/mean`` (TRL's key) and the batch mean of every other value the
server returns (``rules/<i>``, ``judge/failed``, ``length/tokens``, ...). The same folder holds
``llm_usage.json``, what the served LLM roles have cost so far, rewritten every
``reward_server.usage_every_s`` seconds and when the server stops.

The artifact is committed before serving; ``sessions/`` is a run record
(:data:`autorule.core.identity.SESSIONS_DIR`), outside the content hash, so serving never makes
the artifact look changed.

After an OpenRLHF job, grpo keeps the rows scored while the job ran (:func:`in_window`) and
groups them in order into rollouts of ``prompts_per_rollout x num_generations`` completions
(:func:`rollouts`), which become its ``log_history.jsonl``. A batch is never split: one that
crosses a rollout's size is counted whole in that rollout (OpenRLHF scores a rollout's
micro-batches before it trains on them, so batches of two rollouts do not mix in practice).
The limit: rows carry no run identity, so one reward server serves one run; two runs sharing a
server would mix their rows (``scripts/slurm/openrlhf.sh`` starts one per job).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autorule.core.identity import SESSIONS_DIR

log = logging.getLogger(__name__)

SCORES_FILE = "scores.jsonl"
SERVER_FILE = "server.json"  # the reward_server artifact's record of what it serves
TIME, COMPLETIONS, TOTAL = "time", "completions", "reward"
# Keys the reader adds: the session a row came from, a rollout cut short by the job's end.
SESSION, PARTIAL = "session", "partial"
NOT_AVERAGED = (TIME, COMPLETIONS, SESSION)


def term_key(name: str) -> str:
    """TRL's log key of a reward term's mean, which evaluate's hacking view reads."""
    return f"rewards/{name}/mean"


def _mean(values: Sequence[float]) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else None


def batch_row(
    rewards: Sequence[float],
    extra: Mapping[str, Sequence[float]],
    terms: Sequence[str],
    now: float,
) -> dict[str, Any]:
    """One scored batch's row: its size, the mean total (a non-finite reward counts 0, as the
    client is answered), each term's mean under TRL's key and every other value's mean."""
    row: dict[str, Any] = {
        TIME: float(now),
        COMPLETIONS: len(rewards),
        TOTAL: _mean([r if math.isfinite(r) else 0.0 for r in rewards]),
    }
    for key, values in extra.items():
        row[term_key(key) if key in terms else key] = _mean(values)
    return row


class SessionLog:
    """The log of one serving session: ``scores.jsonl`` (one row per batch, appended and
    flushed under a lock, so a killed server leaves every row it wrote) and ``llm_usage.json``
    (the roles' usage record, rewritten atomically at most every ``usage_every_s`` seconds as
    batches are scored, and on :meth:`close`).

    ``llms``: role -> backend of the served terms (their ``llms`` attributes)."""

    def __init__(
        self,
        artifact: Path,
        terms: Sequence[str],
        llms: Mapping[str, Any] | None = None,
        usage_every_s: float = 30.0,
    ):
        self.folder = _new_session(Path(artifact) / SESSIONS_DIR)
        self.terms, self.llms = list(terms), dict(llms or {})
        self.usage_every_s = float(usage_every_s)
        self._lock = threading.Lock()
        self._file = open(self.folder / SCORES_FILE, "a", encoding="utf-8")  # noqa: SIM115
        self._usage_at = 0.0
        self.rows = 0
        if self.llms:
            self.write_usage()

    def add(self, rewards: Sequence[float], extra: Mapping[str, Sequence[float]]) -> None:
        """Appends the row of one scored batch (and the usage record when it is due)."""
        row = batch_row(rewards, extra, self.terms, time.time())
        with self._lock:
            if self._file.closed:
                return
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
            self.rows += 1
            due = self.llms and time.monotonic() - self._usage_at >= self.usage_every_s
        if due:
            self.write_usage()

    def write_usage(self) -> None:
        from autorule.core.files import write_json_atomic
        from autorule.llm.base import USAGE_FILE, usage_record

        with self._lock:
            self._usage_at = time.monotonic()
            write_json_atomic(self.folder / USAGE_FILE, usage_record(self.llms))

    def close(self) -> None:
        with self._lock:
            self._file.close()
        if self.llms:
            self.write_usage()


def _new_session(sessions: Path) -> Path:
    """A fresh folder ``<UTC start>-<pid>`` (a suffix when this process served already in this
    second: two sessions never share a log)."""
    start = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    sessions.mkdir(parents=True, exist_ok=True)
    name, n = f"{start}-{os.getpid()}", 1
    while True:
        try:
            (sessions / name).mkdir()
            return sessions / name
        except FileExistsError:
            n += 1
            name = f"{start}-{os.getpid()}-{n}"


# --------------------------------------------------------------------------------------------
# Reading: what grpo does after an OpenRLHF job


def sessions(artifact: Path) -> list[str]:
    """The names of the sessions a reward_server artifact has logged, oldest first."""
    folder = Path(artifact) / SESSIONS_DIR
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def served_rules(artifact: Path) -> list[str]:
    """The rules a reward_server artifact serves (its ``server.json``), empty without any."""
    record = json.loads((Path(artifact) / SERVER_FILE).read_text(encoding="utf-8"))
    return [str(rule) for rule in record.get("rules") or []]


def session_usage(artifact: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Role -> usage record of the named sessions (:func:`merged_usage` of their
    ``llm_usage.json``); empty when none has one."""
    from autorule.llm.base import USAGE_FILE

    records = []
    for name in sorted(names):
        file = Path(artifact) / SESSIONS_DIR / name / USAGE_FILE
        if file.is_file():
            records.append(json.loads(file.read_text(encoding="utf-8")))
    return merged_usage(records)


def read_sessions(artifact: Path) -> list[dict[str, Any]]:
    """Every row of every session of a reward_server artifact, each with its ``session``
    (folder name), in time order. A last line cut short by a killed server is skipped."""
    rows = []
    for file in sorted((Path(artifact) / SESSIONS_DIR).glob(f"*/{SCORES_FILE}")):
        with open(file, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and TIME in row and COMPLETIONS in row:
                    rows.append({**row, SESSION: file.parent.name})
    return sorted(rows, key=lambda row: row[TIME])


def in_window(rows: Sequence[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    """The rows scored between ``start`` and ``end`` (Unix seconds, both included)."""
    return [row for row in rows if start <= float(row[TIME]) <= end]


def rollouts(rows: Sequence[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """Rows grouped in order into rollouts of ``size`` completions, one log row each:
    ``step`` (1, 2, ...), ``completions`` and each value's completion-weighted mean over the
    rows that have it. Batches are kept whole; a last rollout short of ``size`` is kept with
    ``partial: true``."""
    if size < 1:
        raise ValueError(f"a rollout of {size} completions")
    groups: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    count = 0
    for row in rows:
        current.append(row)
        count += int(row[COMPLETIONS])
        if count >= size:
            groups.append(current)
            current, count = [], 0
    out = [_merge(group, step) for step, group in enumerate(groups, 1)]
    if current:
        out.append({**_merge(current, len(groups) + 1), PARTIAL: True})
    return out


def _merge(group: Sequence[dict[str, Any]], step: int) -> dict[str, Any]:
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for row in group:
        n = int(row[COMPLETIONS])
        for key, value in row.items():
            if key in NOT_AVERAGED or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            sums[key] = sums.get(key, 0.0) + n * float(value)
            weights[key] = weights.get(key, 0.0) + n
    merged: dict[str, Any] = {"step": step, COMPLETIONS: sum(int(r[COMPLETIONS]) for r in group)}
    merged.update({key: sums[key] / weights[key] for key in sums if weights[key] > 0})
    return merged


def merged_usage(records: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict]:
    """Role -> usage record over several sessions' ``llm_usage.json``: counts, tokens and cost
    added up (None when any session's is unknown); latency percentiles kept only when one
    session holds the role (they cannot be combined from records)."""
    by_role: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        for role, usage in record.items():
            by_role.setdefault(role, []).append(usage)
    out = {}
    for role, parts in by_role.items():
        if len(parts) == 1:
            out[role] = dict(parts[0])
            continue
        merged: dict[str, Any] = {}
        for key in parts[0]:
            values = [part.get(key) for part in parts]
            if key.startswith("latency_"):
                merged[key] = None
            elif all(isinstance(v, int | float) for v in values):
                merged[key] = sum(values)
            else:
                merged[key] = None
        out[role] = merged
    return out
