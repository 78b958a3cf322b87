"""Reward terms over HTTP, as OpenRLHF's remote reward client (``--remote_rm_url``) asks for them.

The wire format, read from OpenRLHF's client code (facts only):

* request: ``POST`` a JSON object ``{"query": [...], "prompts": [...], "labels": [...]}``. Each
  query is the prompt and the response decoded together, special tokens kept (padding, eos);
  ``prompts`` holds each query's prompt as the policy read it; ``labels`` the dataset's label
  column (None without one). Releases up to 0.8 (the AutoRule scripts' era: ``remote_rm_fn``)
  send one request per actor micro-batch; from 0.9 on (``SingleTurnAgentExecutor``) one request
  per response, many at once.
* response: ``{"rewards": [...], "scores": [...], "extra_logs": {name: [...]}}``, one value per
  query in each list. Early releases read ``rewards`` only; later ones also ``scores`` (dynamic
  filtering) and log every ``extra_logs`` key as a per-sample value, averaged per step.

Here ``rewards`` is the weighted sum of the terms, ``scores`` the same, and ``extra_logs`` holds
each term's own value, each rule's satisfaction (``rules/<i>``: 1.0 / 0.0, or p(Yes) with
``judge.soft``) and each term's batch metrics (``judge/failed`` ...).

Batching: requests that arrive while a batch is open (``reward_server.batch_wait_s`` after its
first request, at most ``reward_server.max_batch`` responses) are scored together, so the judge
gets every (response, rule) request of a rollout's concurrent posts in one call and runs them
with its full concurrency. One batch is scored at a time.

Bad requests get a 4xx with a message and never reach the terms: a body over
``reward_server.max_body_mb`` (413, read no further), not JSON or not an object, unknown or
missing fields, lists that are empty, not lists of strings or of different lengths, a query that
does not hold its prompt (400). A term that fails answers 500 to that batch's requests, and the
server goes on.

OpenRLHF's client waits 180 s for an answer, then resends the same request (five tries); judging
a large rollout can take longer. A well-formed request's answer is therefore kept by its body
for ``reward_server.reuse_s`` seconds, and the same body sent again while it is being scored
waits for that scoring instead of starting another: the retries extend the client's patience
rather than multiply the judge's work. Refused and failed requests are never kept.

Each scored batch is handed to the serving session's log (``RewardServer.log_to``:
:class:`~autorule.rewards.score_log.SessionLog`), which keeps the batch means grpo's training log
on OpenRLHF is built from.

The standard library's threading HTTP server is used: the reward path is one POST per
micro-batch, and it needs no dependency beyond the package's own (FastAPI and uvicorn are not).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FIELDS = ("query", "prompts", "labels")
REQUIRED = ("query", "prompts")

# (prompts, responses) -> (rewards, extra_logs: name -> one value per response)
ScoreFn = Callable[[list[str], list[str]], tuple[list[float], dict[str, list[float]]]]


def advertised_url(section: Any) -> str:
    """Where clients reach the server of config section ``reward_server``: its
    ``advertise_host`` (else this machine's name), ``port`` and ``path``."""
    import socket

    host = section.advertise_host or socket.gethostname()
    path = str(section.path) if str(section.path).startswith("/") else f"/{section.path}"
    return f"http://{host}:{int(section.port)}{path}"


class BadRequest(ValueError):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _strings(value: Any, name: str, allow_none: bool = False) -> list:
    if not isinstance(value, list):
        raise BadRequest(f"field {name!r} must be a list, got {type(value).__name__}")
    if not value:
        raise BadRequest(f"field {name!r} is an empty list")
    for i, item in enumerate(value):
        if not (isinstance(item, str) or (allow_none and item is None)):
            raise BadRequest(f"{name}[{i}] must be a string, got {type(item).__name__}")
    return value


def parse_request(body: bytes, max_queries: int) -> tuple[list[str], list[str]]:
    """``(queries, prompts)`` of one request body; :class:`BadRequest` on anything else."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"the body is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"the body must be a JSON object with {list(FIELDS)}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; expected {list(FIELDS)}")
    missing = [name for name in REQUIRED if name not in data]
    if missing:
        raise BadRequest(f"missing field(s) {missing}; expected {list(FIELDS)}")
    queries = _strings(data["query"], "query")
    prompts = _strings(data["prompts"], "prompts")
    if len(queries) > max_queries:
        raise BadRequest(
            f"{len(queries)} queries in one request, more than reward_server.max_batch="
            f"{max_queries}",
            status=413,
        )
    if len(prompts) != len(queries):
        raise BadRequest(f"{len(queries)} queries but {len(prompts)} prompts")
    if data.get("labels") is not None:
        labels = _strings(data["labels"], "labels", allow_none=True)
        if len(labels) != len(queries):
            raise BadRequest(f"{len(queries)} queries but {len(labels)} labels")
    return queries, prompts


def split_response(
    query: str,
    prompt: str,
    special_tokens: Sequence[str],
    index: int = 0,
    variants: Sequence[str] = (),
) -> str:
    """The response inside ``query``: the text after its prompt, without the special tokens
    (eos, padding) that decoding kept around it. ``variants``: other spellings of the prompt
    that decoding may have produced (a tokenizer's clean-up of spaces before punctuation)."""
    for form in (prompt, *variants):
        start = query.find(form)
        if start >= 0:
            break
    else:
        raise BadRequest(f"query {index} does not hold its prompt (prompts[{index}])")
    response = query[start + len(form) :]
    tokens = [t for t in special_tokens if t]
    stripped = True
    while stripped:
        stripped = False
        for token in tokens:
            if response.endswith(token):
                response, stripped = response[: -len(token)], True
    return response


def term_scorer(funcs: Sequence[Any], weights: Sequence[float]) -> ScoreFn:
    """Scores with reward functions of the registry: the weighted sum, each term's value, each
    rule's per-response satisfaction (the ``rules`` term's ``per_rule`` hook) and each term's
    batch metrics, repeated per response."""

    def score(prompts: list[str], responses: list[str]) -> tuple[list[float], dict]:
        total = np.zeros(len(responses))
        extra: dict[str, list[float]] = {}
        for func, weight in zip(funcs, weights, strict=True):
            per_rule: list[np.ndarray] = []
            values = func(prompts, responses, per_rule=per_rule.append)
            total += float(weight) * np.asarray(values, dtype=float)
            extra[func.__name__] = [float(v) for v in values]
            for satisfied in per_rule:
                for i, column in enumerate(np.asarray(satisfied, dtype=float).T):
                    extra[f"rules/{i}"] = column.tolist()
            metrics = func.metrics() if hasattr(func, "metrics") else {}
            for key, value in metrics.items():
                extra.setdefault(key, [float(value)] * len(responses))
        return total.tolist(), extra

    return score


@dataclass
class _Answer:
    done: threading.Event = field(default_factory=threading.Event)
    value: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class _Pending:
    prompts: list[str]
    responses: list[str]
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[list[float], dict[str, list[float]]] | None = None
    error: str | None = None


class Batcher:
    """Collects the requests that arrive within ``wait_s`` of a batch's first one (at most
    ``max_batch`` responses) and scores them in one call of ``score``."""

    def __init__(
        self,
        score: ScoreFn,
        wait_s: float,
        max_batch: int,
        on_scored: Callable[[list[float], dict[str, list[float]]], None] | None = None,
    ):
        self.score, self.wait_s, self.max_batch = score, float(wait_s), int(max_batch)
        self.on_scored = on_scored  # sees each scored batch (the session's score log)
        self._queue: list[_Pending] = []
        self._cond = threading.Condition()
        self._stop = False
        self.batches = 0  # batches scored (tests and logs)
        self._thread = threading.Thread(target=self._loop, name="reward-batcher", daemon=True)
        self._thread.start()

    def submit(self, prompts: list[str], responses: list[str]) -> tuple[list[float], dict]:
        """Blocks until the request's batch is scored; raises RuntimeError when scoring failed."""
        item = _Pending(prompts, responses)
        with self._cond:
            if self._stop:
                raise RuntimeError("the reward server is stopping")
            self._queue.append(item)
            self._cond.notify_all()
        item.done.wait()
        if item.error is not None:
            raise RuntimeError(item.error)
        assert item.result is not None
        return item.result

    def _take(self) -> list[_Pending] | None:
        with self._cond:
            while not self._queue and not self._stop:
                self._cond.wait()
            if self._stop and not self._queue:
                return None
            deadline = time.monotonic() + self.wait_s
            while not self._stop:
                size = sum(len(item.responses) for item in self._queue)
                left = deadline - time.monotonic()
                if size >= self.max_batch or left <= 0:
                    break
                self._cond.wait(left)
            batch, size = [], 0
            while self._queue:
                if batch and size + len(self._queue[0].responses) > self.max_batch:
                    break
                item = self._queue.pop(0)
                batch.append(item)
                size += len(item.responses)
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            prompts = [p for item in batch for p in item.prompts]
            responses = [r for item in batch for r in item.responses]
            try:
                rewards, extra = self.score(prompts, responses)
                self.batches += 1
                self._record(rewards, extra)
                start = 0
                for item in batch:
                    end = start + len(item.responses)
                    item.result = (
                        rewards[start:end],
                        {key: values[start:end] for key, values in extra.items()},
                    )
                    start = end
            except Exception as err:  # noqa: BLE001 - answered as a 500, the server goes on
                log.exception("reward server: scoring a batch of %d failed", len(responses))
                for item in batch:
                    item.error = f"{type(err).__name__}: {err}"
            for item in batch:
                item.done.set()

    def _record(self, rewards: list[float], extra: dict[str, list[float]]) -> None:
        if self.on_scored is None:
            return
        try:
            self.on_scored(rewards, extra)
        except Exception:  # noqa: BLE001 - a log that cannot be written does not fail the batch
            log.exception("reward server: logging a scored batch failed")

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=30)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # One request per response (OpenRLHF >= 0.9) means hundreds of connections at once.
    request_queue_size = 1024

    def handle_error(self, request, client_address) -> None:  # a dropped client is not a crash
        log.warning("reward server: connection from %s failed", client_address)


class RewardServer:
    """The HTTP server: ``POST <path>`` scores, ``GET /health`` answers what it serves.

    ``reuse_s``: how long an answer is kept for the same request body sent again (OpenRLHF's
    client gives up after 180 s and resends; a rollout's judging can take longer).
    ``special_tokens``: texts stripped from the end of each response (the policy tokenizer's
    eos and pad tokens); ``prompt_variants``: other spellings of a prompt that decoding may give
    (:func:`split_response`). :meth:`log_to` hands each scored batch to a session log. Use as a
    context manager, or ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        score: ScoreFn,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/get_reward",
        special_tokens: Sequence[str] = (),
        prompt_variants: Callable[[str], Sequence[str]] | None = None,
        wait_s: float = 0.05,
        max_batch: int = 4096,
        max_body_bytes: int = 64 * 2**20,
        reuse_s: float = 900.0,
        info: dict[str, Any] | None = None,
    ):
        self.path = path if path.startswith("/") else "/" + path
        self.special_tokens = tuple(special_tokens)
        self.prompt_variants = prompt_variants or (lambda prompt: ())
        self.max_batch, self.max_body_bytes = int(max_batch), int(max_body_bytes)
        self.info = dict(info or {})
        self.session: Any = None
        self.batcher = Batcher(score, wait_s, max_batch)
        self.requests = {"ok": 0, "refused": 0, "failed": 0, "reused": 0}
        # Answers by request body, kept reuse_s seconds for clients that resend a request they
        # gave up waiting for (a retry joins the scoring still under way instead of repeating it).
        self.reuse_s = float(reuse_s)
        self._answers: dict[str, tuple[float, _Answer]] = {}
        self._answers_lock = threading.Lock()
        self._httpd = _Server((host, port), self._handler())
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, host: str | None = None) -> str:
        return f"http://{host or self._httpd.server_address[0]}:{self.port}{self.path}"

    def log_to(self, session: Any) -> None:
        """Hands each scored batch to ``session`` (a
        :class:`~autorule.rewards.score_log.SessionLog`), which ``stop()`` closes."""
        self.session = session
        self.batcher.on_scored = session.add

    def start(self) -> RewardServer:
        # A short poll interval makes stop() quick (the default waits up to 0.5 s).
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops accepting requests, lets the open batch finish, closes the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self.batcher.stop()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.session is not None:
            self.session.close()

    def __enter__(self) -> RewardServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def score_body(self, body: bytes) -> dict[str, Any]:
        """The JSON answer to one request body (raises :class:`BadRequest`)."""
        queries, prompts = parse_request(body, self.max_batch)
        responses = [
            split_response(q, p, self.special_tokens, i, self.prompt_variants(p))
            for i, (q, p) in enumerate(zip(queries, prompts, strict=True))
        ]
        key = hashlib.sha256(body).hexdigest()
        with self._answers_lock:
            now = time.monotonic()
            for old in [k for k, (at, _) in self._answers.items() if now - at > self.reuse_s]:
                del self._answers[old]
            entry = self._answers.get(key)
            owner = entry is None
            if owner:
                entry = (now, _Answer())
                self._answers[key] = entry
        answer = entry[1]
        if not owner:  # the same request again: a client that timed out and retried
            self.requests["reused"] += 1
            answer.done.wait()
            if answer.value is None:
                raise RuntimeError(answer.error or "scoring failed")
            return answer.value
        try:
            rewards, extra = self.batcher.submit(prompts, responses)
            rewards = [r if math.isfinite(r) else 0.0 for r in rewards]
            answer.value = {"rewards": rewards, "scores": rewards, "extra_logs": extra}
            return answer.value
        except RuntimeError as err:
            answer.error = str(err)
            with self._answers_lock:  # a failure is not kept: the next try scores again
                self._answers.pop(key, None)
            raise
        finally:
            answer.done.set()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args) -> None:
                log.debug("reward server: " + fmt, *args)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") == "/health":
                    self._send(200, {"status": "ok", **server.info, "requests": server.requests})
                else:
                    self._refuse(404, f"no such path {self.path}; POST {server.path}")

            def do_POST(self) -> None:  # noqa: N802
                if self.path.split("?")[0] != server.path:
                    self._refuse(404, f"no such path {self.path}; POST {server.path}")
                    return
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    self._refuse(411, "a Content-Length header is required")
                    return
                if int(length) > server.max_body_bytes:
                    self._refuse(
                        413,
                        f"body of {length} bytes is over reward_server.max_body_mb "
                        f"({server.max_body_bytes} bytes)",
                    )
                    return
                body = self.rfile.read(int(length))
                try:
                    answer = server.score_body(body)
                except BadRequest as err:
                    self._refuse(err.status, str(err))
                    return
                except RuntimeError as err:
                    server.requests["failed"] += 1
                    self._send(500, {"error": f"scoring failed: {err}"})
                    return
                server.requests["ok"] += 1
                self._send(200, answer)

            def _refuse(self, status: int, message: str) -> None:
                server.requests["refused"] += 1
                # The unread rest of an oversized body would be parsed as the next request.
                self.close_connection = True
                self._send(status, {"error": message})

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

        return Handler
