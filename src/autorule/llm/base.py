"""What every LLM backend shares: the request cache, retries, bounded concurrency, call records.

A backend implements one call (:meth:`RemoteLLM.call_once` for APIs) or one batch
(:meth:`LocalLLM.generate_batch` for models run in-process); :meth:`LLM.complete_all` does the
rest:

* **cache** — requests already answered (same backend, model, messages and parameters) are read
  from :class:`~autorule.llm.cache.ResponseCache` instead of being sent; each answer is stored the
  moment it arrives, so an interrupted run loses at most the calls in flight. Identical requests
  within one batch are sent once and count as cached;
* **concurrency** — remote calls run on a pool of ``max_concurrency`` threads. The API clients are
  synchronous and the work is waiting on the network, so threads are enough; a process pool (as
  the released code used) would only add start-up and pickling cost;
* **retries** — throttling, 5xx answers, timeouts and failed connections (refused, dropped) are
  retried with exponential backoff plus random jitter (tenacity), so many threads throttled at
  once do not come back in lockstep. The SDKs' own retries are switched off in each backend so the
  two layers never multiply;
* **records** — each call's latency, tokens in and out, retries and error go into
  :class:`Completion`; a tqdm bar shows calls done, failed and cached.

Besides answers (:meth:`LLM.complete_all`), a backend may read *verdicts*
(:meth:`LLM.verdict_all`): the log-probability of each of a few short answers ("Yes", "No") as
the first token of the reply, with no generation (a served model: one token with its top
log-probabilities; a local one: one forward pass). They go through the same cache, retries and
concurrency; their cache key also holds the choices, so an answer and a verdict to the same
messages never share an entry.

A call that still fails after its retries does not raise from :meth:`LLM.complete_all`: its
Completion carries the error, and the caller decides how many failures it tolerates.

A broken answer (no content block, a body that is not the API's JSON, text that is not valid
Unicode) is a failed attempt, not an answer (:class:`UnusableAnswerError`): remote calls retry it
like a 5xx, and it is never cached, so a re-run against a healthy endpoint asks again.

An *empty* answer (no text and no reasoning) in a normal response is the model's own when the
model generated something (output tokens and a finish reason: a greedy model that emitted only
special tokens, or ran out of ``max_tokens`` inside them): it comes back as it is, not retried
(at temperature 0 a retry gives the same), and callers count it unparsed. An empty answer with
nothing generated may be a glitch: it is asked once more, and if still empty comes back the same
way. Local backends (hf, vllm) return empty answers as they are. Empty answers are never cached,
so a re-run asks again. An answer with reasoning but no final text (a reasoning model cut off by
``max_tokens``) is kept: it was paid for, and the extract stage reads the reasoning.

Every backend keeps a tally of its calls (:class:`Usage`): calls, cache hits, failures, empty
answers, tokens in and out (the server's usage block, else counted with the model's tokenizer when
one is at hand, else unknown) and latencies; :func:`usage_record` turns the tallies of a stage's
roles into the per-role record (with a cost estimate when the role sets ``price``) that manifests,
``llm_usage.json`` (:func:`record_usage`) and the report show.

Error messages are redacted as they are made (:mod:`autorule.core.secrets`): servers echo
request headers into them.

On Ctrl-C, queued calls are dropped at once; calls already in flight run to their end and are
cached before the process exits (a second Ctrl-C abandons them too).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from autorule.core.hashing import digest
from autorule.core.secrets import redact_text
from autorule.core.stage import LLM_TRANSPORT_KEYS
from autorule.llm.cache import ResponseCache
from autorule.llm.reasoning import split_reasoning

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
# A verdict request: the answers to score as the reply's first token, and how many alternatives a
# served model is asked for (a choice outside them counts as probability 0).
Verdict = tuple[tuple[str, ...], int]


class LLMCallError(RuntimeError):
    """An LLM call failed for good (after its retries, or with an error not worth retrying)."""


class UnreachableError(RuntimeError):
    """A served role's endpoint did not answer the reachability probe (:meth:`RemoteLLM.probe`)."""


class UnusableAnswerError(RuntimeError):
    """An attempt came back without an answer worth keeping (see the module docstring)."""


class EmptyAnswerError(UnusableAnswerError):
    """An empty answer with nothing generated, on the first attempt: asked once more."""


@dataclass
class Completion:
    """One answer, or the error that prevented it, with the call's record."""

    text: str = ""  # the answer, reasoning removed
    reasoning: str = ""  # the chain of thought, when the model produced one
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0  # wall time of the call, retries and waits included
    retries: int = 0
    cached: bool = False  # replayed from the response cache
    error: str | None = None
    # Verdict requests only: choice -> log-probability as the reply's first token (None when a
    # served model did not list it among its top alternatives).
    choice_logprobs: dict[str, float | None] | None = None
    # Why generation stopped ("stop", "length", "end_turn", "max_tokens" ...), when it is known.
    finish_reason: str | None = None
    # Where input_tokens and output_tokens come from: "response" (the server's usage block, or a
    # local engine's token ids), "tokenizer" (counted here) or "unknown" (both then 0).
    tokens_from: str = "response"

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def empty(self) -> bool:
        """An answer (not a verdict, not a failure) with neither text nor reasoning."""
        return (
            self.ok
            and self.choice_logprobs is None
            and not self.text.strip()
            and not self.reasoning.strip()
        )

    @property
    def generated(self) -> bool:
        """The model generated tokens and said why it stopped: an empty answer is its own."""
        return bool(self.finish_reason) and self.output_tokens > 0

    def record(self) -> dict[str, Any]:
        """The call's record without the texts (for call logs)."""
        out = asdict(self)
        del out["text"], out["reasoning"]
        return out


def check_usable(completion: Completion, allow_empty: bool = False) -> Completion:
    """``completion`` itself when it holds an answer; raises :class:`UnusableAnswerError`.

    ``allow_empty``: an empty answer is kept (the module docstring says when it is the model's
    own); a parser will count it unparsed."""
    for name in ("text", "reasoning"):
        value = getattr(completion, name)
        if not isinstance(value, str):
            raise UnusableAnswerError(f"the answer's {name} is {type(value).__name__}, not text")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise UnusableAnswerError(
                f"the answer's {name} is not valid Unicode text ({err.reason} at position "
                f"{err.start})"
            ) from None
    if completion.choice_logprobs is not None:  # a verdict: the choices' probabilities
        return completion
    if not allow_empty and not completion.text.strip() and not completion.reasoning.strip():
        raise UnusableAnswerError("the answer is empty")
    return completion


def check_settings(section: Mapping[str, Any], where: str) -> None:
    """Refuses numbers in an LLM config section that cannot work, before any call is paid for.

    ``where`` is the section's dotted name in the config (``llm``, ``extract.llm`` ...), so the
    :class:`~autorule.core.config.ConfigError` names the key to fix. Keys a backend lacks are
    skipped.
    """
    from autorule.core.config import check_number

    def number(key: str, **allowed) -> None:
        if key in section:
            check_number(section[key], f"{where}.{key}", **allowed)

    number("max_tokens", low=1)
    number("temperature", integer=False, low=0)
    number("top_p", integer=False, low=0, high=1, low_open=True)
    number("max_concurrency", low=1)
    number("batch_size", low=1)
    number("verdict_batch_size", low=1, none_ok=True)
    number("seed")
    number("tensor_parallel_size", low=1)
    number("gpu_memory_utilization", integer=False, low=0, high=1, low_open=True)
    number("max_model_len", low=1, none_ok=True)
    number("max_input_tokens", low=1, none_ok=True)
    for key in ("timeout", "read_timeout", "connect_timeout"):
        number(key, integer=False, low=0, low_open=True, none_ok=True)
    for key in ("input", "output"):
        if key in (section.get("price") or {}):
            check_number(
                section["price"][key], f"{where}.price.{key}", integer=False, low=0, none_ok=True
            )
    retry = section.get("retry") or {}
    if "max_attempts" in retry:
        check_number(retry["max_attempts"], f"{where}.retry.max_attempts", low=1)
    for key in ("initial_wait", "max_wait", "jitter"):
        if key in retry:
            check_number(retry[key], f"{where}.retry.{key}", integer=False, low=0)


@dataclass
class Usage:
    """What one backend's calls cost so far: calls, cache hits, failures, tokens, latencies.

    Tokens and latencies cover the calls sent (cache hits cost nothing); a call whose token counts
    are unknown (no usage block, no local tokenizer) is counted in ``unknown_token_calls``."""

    calls: int = 0
    cache_hits: int = 0
    failed_calls: int = 0
    empty_answers: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    unknown_token_calls: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, completions: Sequence[Completion]) -> None:
        for c in completions:
            self.calls += 1
            if c.cached:
                self.cache_hits += 1
                continue
            self.latencies.append(float(c.latency_s))
            if not c.ok:
                self.failed_calls += 1
                continue
            self.empty_answers += c.empty
            if c.tokens_from == "unknown":
                self.unknown_token_calls += 1
            else:
                self.input_tokens += int(c.input_tokens)
                self.output_tokens += int(c.output_tokens)

    def merge(self, other: Usage) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def record(self, price: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The per-role record: counts, tokens (None when every paid call's are unknown),
        p50/p95 latency in seconds, and ``cost_usd`` when ``price`` gives USD per million input
        and output tokens (None without a price, or with unknown tokens)."""
        sent = self.calls - self.cache_hits
        known = sent - self.failed_calls - self.unknown_token_calls
        all_unknown = self.unknown_token_calls > 0 and known == 0
        record: dict[str, Any] = {
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "failed_calls": self.failed_calls,
            "empty_answers": self.empty_answers,
            "input_tokens": None if all_unknown else self.input_tokens,
            "output_tokens": None if all_unknown else self.output_tokens,
            "unknown_token_calls": self.unknown_token_calls,
            "latency_p50_s": _percentile(self.latencies, 50),
            "latency_p95_s": _percentile(self.latencies, 95),
            "cost_usd": None,
        }
        price = dict(price or {})
        if (
            price.get("input") is not None
            and price.get("output") is not None
            and not self.unknown_token_calls
        ):
            cost = (
                self.input_tokens * float(price["input"])
                + self.output_tokens * float(price["output"])
            ) / 1e6
            record["cost_usd"] = round(cost, 6)
        return record


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return round(float(np.percentile(values, q)), 4)


# The key of the per-role usage record in manifests (grpo: and metrics.json), and its file.
USAGE_KEY = "llm_usage"
USAGE_FILE = "llm_usage.json"


def usage_record(llms: Mapping[str, LLM | None]) -> dict[str, dict[str, Any]]:
    """Role -> usage record (:meth:`Usage.record`) of the backends a stage built (None: a role
    it did not call)."""
    return {role: llm.usage.record(llm.price) for role, llm in llms.items() if llm is not None}


def add_roles(used: dict[str, LLM], more: Mapping[str, LLM]) -> dict[str, LLM]:
    """``used`` (role -> backend) with the backends of ``more`` added; a role already there
    keeps its backend, which takes the newcomer's tally too."""
    for role, llm in more.items():
        if role in used and used[role] is not llm:
            used[role].usage.merge(llm.usage)
        else:
            used.setdefault(role, llm)
    return used


def record_usage(workdir: Path, llms: Mapping[str, LLM | None]) -> dict[str, Any]:
    """What a stage's LLM roles cost, recorded before it commits: written to
    ``workdir/llm_usage.json`` and returned as ``{"llm_usage": ...}`` for the manifest
    (``job.commit(counts, extra={**extra, **record_usage(job.workdir, {...})})``).

    A file of its own rather than a key of ``metrics.json``: latencies and cache hits differ
    between two runs that made the same content, so it is a run record
    (``core.identity.RUN_RECORDS``), left out of the content hash like ``calls.jsonl``."""
    from autorule.core.files import write_json_atomic

    record = usage_record(llms)
    write_json_atomic(Path(workdir) / USAGE_FILE, record)
    return {USAGE_KEY: record}


@dataclass
class RetrySettings:
    """Backoff for transient errors: wait ~initial_wait * 2**n + U(0, jitter), at most max_wait."""

    max_attempts: int = 8
    initial_wait: float = 2.0
    max_wait: float = 120.0
    jitter: float = 2.0


class LLM:
    """Base of all backends. Subclasses set ``backend`` and implement :meth:`_run`."""

    backend = "base"
    # The config section that built it (``judge.llm``; set by autorule.llm.build): messages name
    # keys as ``<role>.<key>``, as the command line spells them.
    role: str | None = None

    @property
    def who(self) -> str:
        """How messages name this backend: ``judge.llm (openai)``, or the backend alone."""
        return f"{self.role} ({self.backend})" if self.role else self.backend

    # Whether the backend reads verdicts (implements verdict_once or verdict_batch).
    supports_verdicts = False
    # What identifies a backend's answers besides model and messages: every constructor argument
    # except the transport ones (LLM_TRANSPORT_KEYS, shared with the artifact hash).
    settings: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any):
        # Records the settings a backend was built with, whatever its constructor's signature.
        instance = super().__new__(cls)
        instance.settings = dict(kwargs)
        return instance

    def __init__(
        self,
        *,
        model: str,
        temperature: float,
        max_tokens: int,
        max_concurrency: int = 8,
        retry: dict | None = None,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        price: dict | None = None,
        timeout: float | None = None,
    ):
        self.model = str(model)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.max_concurrency = max(1, int(max_concurrency))
        self.retry = RetrySettings(**(retry or {}))
        self.cache = ResponseCache(cache_dir) if cache and cache_dir is not None else None
        self.progress = bool(progress)
        self.price = dict(price or {})  # USD per million tokens: input, output (None: unknown)
        # Seconds one remote call may wait for its answer (openai: the client's timeout, bedrock:
        # caps read_timeout); a model run in-process has no call to time out.
        self.timeout = None if timeout is None else float(timeout)
        self.usage = Usage()
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------------------
    # What identifies a request

    def params(self) -> dict[str, Any]:
        """Settings that change the answer (part of the cache key): the constructor's arguments
        less the model (keyed on its own) and the transport keys."""
        return {
            k: v
            for k, v in self.settings.items()
            if k not in LLM_TRANSPORT_KEYS and k not in ("model", "_target_")
        }

    def request(self, messages: Messages, verdict: Verdict | None = None) -> dict[str, Any]:
        """What identifies a request in the cache.

        The endpoint is left out on purpose, so a server moved to another host or port keeps its
        cache; see :mod:`autorule.llm.cache`.
        """
        request = {
            "backend": self.backend,
            "model": self.model,
            "messages": messages,
            "params": self.params(),
        }
        if verdict is not None:
            choices, top_logprobs = verdict
            request["verdict"] = {"choices": list(choices), "top_logprobs": top_logprobs}
        return request

    def cache_key(self, messages: Messages, verdict: Verdict | None = None) -> str:
        return digest(self.request(messages, verdict))

    # ----------------------------------------------------------------------------------------
    # Public API

    def complete(self, messages: Messages) -> Completion:
        """One request; raises :class:`LLMCallError` when it fails."""
        [completion] = self.complete_all([messages], desc=None)
        if not completion.ok:
            raise LLMCallError(completion.error)
        return completion

    def complete_all(
        self,
        requests: Sequence[Messages],
        desc: str | None = "llm",
        on_result: Callable[[int, Completion], None] | None = None,
    ) -> list[Completion]:
        """Answers to ``requests`` in order: cached ones replayed, the rest sent.

        ``on_result(index, completion)`` is called as each answer sent in this run arrives (from
        worker threads for remote backends; not for cached answers). Failed calls come back with
        ``error`` set; nothing raises for them.
        """
        return self._answer_all(requests, None, desc, on_result)

    def verdict_all(
        self,
        requests: Sequence[Messages],
        choices: Sequence[str] = ("Yes", "No"),
        top_logprobs: int = 20,
        desc: str | None = "verdict",
        on_result: Callable[[int, Completion], None] | None = None,
    ) -> list[Completion]:
        """The log-probability of each of ``choices`` as the first token of the reply to each
        request (``Completion.choice_logprobs``), without generating; cached, retried and run
        concurrently as :meth:`complete_all`.

        ``top_logprobs``: how many alternatives a served model returns for that token; a choice
        outside them gets None (probability 0). Local backends read the whole distribution.
        """
        if not self.supports_verdicts:
            raise NotImplementedError(
                f"the {self.backend} backend cannot read verdict log-probabilities; "
                "use a backend that can (hf, vllm, openai) or generate the answer instead"
            )
        if len(set(choices)) < 2:
            raise ValueError(f"a verdict needs at least two distinct choices, got {choices!r}")
        return self._answer_all(requests, (tuple(choices), int(top_logprobs)), desc, on_result)

    def _answer_all(
        self,
        requests: Sequence[Messages],
        verdict: Verdict | None,
        desc: str | None,
        on_result: Callable[[int, Completion], None] | None,
    ) -> list[Completion]:
        keys = [self.cache_key(list(m), verdict) for m in requests]
        results: list[Completion | None] = [None] * len(requests)
        pending, first = [], {}  # first: key -> index of the one request sent for it
        for i, key in enumerate(keys):
            hit = self.cache.get(key) if self.cache else None
            if hit is not None:
                stored = {f.name: hit[f.name] for f in fields(Completion) if f.name in hit}
                results[i] = Completion(**{**stored, "cached": True, "error": None})
            elif key not in first:
                first[key] = i
                pending.append(i)
        # Identical requests in one batch (e.g. MT-Bench judgments of the same answers by
        # different judges) are sent once: the cache would give them the same answer anyway.
        repeats = [i for i, r in enumerate(results) if r is None and first[keys[i]] != i]
        # "cached" counts both: answers not paid for in this run.
        stats = Counter(done=0, failed=0, cached=len(requests) - len(pending))
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(requests),
            initial=stats["cached"],
            desc=desc,
            unit="call",
            disable=not self.progress or desc is None,
            dynamic_ncols=True,
        )
        bar.set_postfix(stats, refresh=False)

        def report(i: int, completion: Completion) -> None:
            # Stored before anything else so a call that finished is never paid for twice. An
            # empty answer is not stored: a re-run asks again.
            if completion.ok and not completion.empty and self.cache is not None:
                request = self.request(list(requests[i]), verdict)
                self.cache.put(keys[i], {**request, **asdict(completion)})
            with self._lock:
                results[i] = completion
                stats["done" if completion.ok else "failed"] += 1
                bar.set_postfix(stats, refresh=False)
                bar.update()
            if on_result is not None:
                on_result(i, completion)

        try:
            self._run([(i, list(requests[i])) for i in pending], report, verdict)
        finally:
            bar.close()
        for i in repeats:
            sent = results[first[keys[i]]]
            results[i] = replace(sent, cached=sent.ok)
        with self._lock:
            self.usage.add(results)  # type: ignore[arg-type]
        if stats["failed"]:
            log.warning(
                "%s: %d of %d calls failed", desc or self.backend, stats["failed"], len(requests)
            )
        return results  # type: ignore[return-value]

    def _run(
        self,
        items: list[tuple[int, Messages]],
        report: Callable[[int, Completion], None],
        verdict: Verdict | None = None,
    ) -> None:
        """Answers every ``(index, messages)`` item (or reads its verdict, when ``verdict`` is
        given) and calls ``report`` for each."""
        raise NotImplementedError

    @staticmethod
    def finish(completion: Completion) -> Completion:
        """Moves inline ``<think>`` reasoning out of the answer when no separate field held it."""
        if not completion.reasoning:
            completion.reasoning, completion.text = split_reasoning(completion.text)
        return completion


class RemoteLLM(LLM):
    """A backend that sends one request per call to an API, from a thread pool."""

    def call_once(self, messages: Messages) -> Completion:
        """One attempt; raises the SDK's exception on failure."""
        raise NotImplementedError

    def verdict_once(self, messages: Messages, verdict: Verdict) -> Completion:
        """One attempt at a verdict (``choice_logprobs`` set); raises on failure. Backends that
        implement it set ``supports_verdicts = True``."""
        raise NotImplementedError

    def is_retryable(self, error: BaseException) -> bool:
        """True for throttling, server errors, timeouts and failed connections."""
        raise NotImplementedError

    # Seconds the reachability probe waits: a live server answers it at once.
    PROBE_TIMEOUT = 10.0

    @property
    def endpoint(self) -> str:
        """The URL calls go to, for messages."""
        raise NotImplementedError

    def probe(self) -> None:
        """One cheap request that needs no model time; raises :class:`UnreachableError` naming
        the role and the URL when the endpoint is down, times out, fails with a 5xx or refuses
        the credentials."""
        raise NotImplementedError

    def unreachable(self, why: str) -> UnreachableError:
        return UnreachableError(
            redact_text(
                f"{self.role or self.backend}: the server at {self.endpoint} {why}. Start it, or "
                f"point {self.role or 'the role'} at a live one (its base_url or endpoint_url)."
            )
        )

    def describe_error(self, error: BaseException) -> str:
        """One line naming what went wrong, for the call record (backends may reword SDK text)."""
        return f"{type(error).__name__}: {error}"

    def call_with_retries(self, messages: Messages, verdict: Verdict | None = None) -> Completion:
        """One call with backoff on transient errors; a final failure is returned, not raised.

        An empty answer is returned as it is when the model generated it; one with nothing
        generated is asked once more first (see the module docstring)."""
        from tenacity import (
            Retrying,
            retry_if_exception,
            stop_after_attempt,
            wait_exponential_jitter,
        )

        def retryable(error: BaseException) -> bool:
            return isinstance(error, UnusableAnswerError) or self.is_retryable(error)

        first_empty: list[Completion] = []

        def attempt(messages: Messages) -> Completion:
            completion = check_usable(self.finish(self.call_once(messages)), allow_empty=True)
            if completion.empty and not completion.generated and not first_empty:
                first_empty.append(completion)
                raise EmptyAnswerError("the answer is empty and nothing was generated")
            return completion

        r = self.retry
        retrying = Retrying(
            stop=stop_after_attempt(max(1, r.max_attempts)),
            wait=wait_exponential_jitter(initial=r.initial_wait, max=r.max_wait, jitter=r.jitter),
            retry=retry_if_exception(retryable),
            before_sleep=lambda state: log.info(
                "%s: attempt %d failed (%s); retrying",
                self.who,
                state.attempt_number,
                redact_text(str(state.outcome.exception())) if state.outcome else "?",
            ),
            reraise=True,
        )
        start = time.perf_counter()
        try:
            if verdict is None:
                completion = retrying(attempt, messages)
            else:
                completion = retrying(
                    lambda m: check_usable(self.verdict_once(m, verdict)), messages
                )
        except EmptyAnswerError:  # retry.max_attempts=1: no second try, the empty answer stands
            completion = first_empty[0]
        except Exception as err:  # noqa: BLE001 - any failure becomes a recorded failed call
            attempts = retrying.statistics.get("attempt_number", 1)
            # Our attempt count only: the SDKs' retries are off, so it is the whole story.
            if retryable(err):
                why = (
                    f"gave up after {attempts} attempt(s), "
                    f"{self.role or 'llm'}.retry.max_attempts={r.max_attempts}"
                )
            else:
                why = f"not retryable, stopped after {attempts} attempt(s)"
            return Completion(
                error=redact_text(
                    f"{self.who} call to {self.model} failed ({why}): {self.describe_error(err)}"
                ),
                latency_s=time.perf_counter() - start,
                retries=attempts - 1,
            )
        completion.retries = retrying.statistics.get("attempt_number", 1) - 1
        completion.latency_s = time.perf_counter() - start
        return self.count_tokens(messages, completion)

    def count_tokens(self, messages: Messages, completion: Completion) -> Completion:
        """Fills in token counts the server did not report (``tokens_from="response"`` when it
        did): counted with the model's tokenizer when one loads without the network, else
        marked unknown."""
        if completion.tokens_from != "unknown":
            return completion
        tokenizer = self._local_tokenizer()
        if tokenizer is not None:
            prompt = "\n\n".join(m["content"] for m in messages)
            answer = completion.reasoning + completion.text
            completion.input_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            completion.output_tokens = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
            completion.tokens_from = "tokenizer"
        return completion

    def _local_tokenizer(self):
        """The model's tokenizer when it is on this machine (a folder or the hub's cache); None
        otherwise. Loaded once; a served model's name rarely names a local tokenizer."""
        with self._lock:
            if not hasattr(self, "_tokenizer"):
                try:
                    from transformers import AutoTokenizer

                    self._tokenizer = AutoTokenizer.from_pretrained(
                        self.model, local_files_only=True
                    )
                except Exception:  # noqa: BLE001 - any failure: the counts stay unknown
                    self._tokenizer = None
            return self._tokenizer

    def _run(self, items, report, verdict=None) -> None:
        if not items:
            return
        pool = ThreadPoolExecutor(
            max_workers=min(self.max_concurrency, len(items)),
            thread_name_prefix=f"llm-{self.backend}",
        )
        futures = [
            pool.submit(lambda i, m: report(i, self.call_with_retries(m, verdict)), i, m)
            for i, m in items
        ]
        try:
            for future in as_completed(futures):
                future.result()  # surfaces bugs in report/on_result
        finally:
            # On Ctrl-C or an error, queued calls are dropped; calls already in flight finish
            # and reach the cache, so a re-run pays for nothing twice.
            pool.shutdown(wait=False, cancel_futures=True)


class LocalLLM(LLM):
    """A backend that runs a model in-process and answers requests in batches."""

    def __init__(self, *, batch_size: int = 8, **common):
        super().__init__(**common)
        self.batch_size = max(1, int(batch_size))

    def generate_batch(self, batch: list[Messages]) -> list[Completion]:
        raise NotImplementedError

    def verdict_batch(self, batch: list[Messages], verdict: Verdict) -> list[Completion]:
        """Verdicts of a batch (``choice_logprobs`` set). Backends that implement it set
        ``supports_verdicts = True``."""
        raise NotImplementedError

    # Requests per verdict_batch call; backends whose verdicts batch differently set their own.
    @property
    def verdict_batch_size(self) -> int:
        return self.batch_size

    def _run(self, items, report, verdict=None) -> None:
        size = self.batch_size if verdict is None else self.verdict_batch_size
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            t0 = time.perf_counter()
            if verdict is None:
                completions = self.generate_batch([m for _, m in chunk])
            else:
                completions = self.verdict_batch([m for _, m in chunk], verdict)
            per_item = (time.perf_counter() - t0) / len(chunk)
            for (i, _), completion in zip(chunk, completions, strict=True):
                completion.latency_s = per_item  # a batch's time, shared by its requests
                try:
                    completion = check_usable(self.finish(completion), allow_empty=True)
                except UnusableAnswerError as err:  # a local model's answer: no retry
                    completion = Completion(
                        error=f"{self.who} call to {self.model} failed: {err}",
                        latency_s=per_item,
                    )
                report(i, completion)


def counts_for(token: str, choice: str) -> bool:
    """The verdict-token rule, the same for served and local judges: a token read as the reply's
    next token counts for a choice when its text, white space stripped, is a non-empty beginning
    of the choice (``"Yes"``, ``" Yes"`` and ``"Y"`` all count for ``"Yes"``). A tokenizer that
    spells "Yes" as one token and one that spells it "Y" + "es" are thus read alike."""
    text = token.strip()
    return bool(text) and choice.startswith(text)


def check_choices(choices: Sequence[str]) -> None:
    """Refuses choices that a token could count for together (:func:`counts_for`): two choices
    must not begin with the same character."""
    if len(choices) != 2 or any(not str(c).strip() for c in choices):
        raise ValueError("the verdict needs two non-empty choices, satisfied first")
    first = [str(c).strip()[0] for c in choices]
    if first[0] == first[1]:
        raise ValueError(
            f"both choices begin with {first[0]!r}, so a token of the reply could count for both"
        )


def check_verdict_tokens(tokenizer, choices: Sequence[str], opening: str = "") -> None:
    """Refuses choices a tokenizer cannot show as the next token after ``opening``: the token
    that begins each choice there must count for it (:func:`counts_for`), not merge with the
    opening (``"[[Yes"`` as one token would leave nothing to read after ``"[["``)."""
    check_choices(choices)
    start = tokenizer(opening, add_special_tokens=False)["input_ids"] if opening else []
    for choice in choices:
        ids = tokenizer(opening + choice, add_special_tokens=False)["input_ids"]
        if ids[: len(start)] != start or len(ids) == len(start):
            raise ValueError(f"{choice!r} merges with the opening {opening!r} into one token")
        token = tokenizer.decode([ids[len(start)]])
        if not counts_for(token, choice):
            raise ValueError(
                f"after {opening!r}, {choice!r} begins with the token {token!r}, which does not "
                "count for it"
            )


def verdict_token_ids(tokenizer, choices: Sequence[str]) -> list[list[int]]:
    """For each choice, the ids of every vocabulary token that counts for it (:func:`counts_for`):
    a local judge adds up their probabilities as a served one adds up its listed tokens'."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return [[i for i, text in enumerate(texts) if counts_for(text, c)] for c in choices]


def choice_logprobs(
    candidates: Sequence[tuple[str, float]], choices: Sequence[str]
) -> dict[str, float | None]:
    """Each choice's log-probability among a served model's top alternatives for one token.

    ``candidates`` are ``(token text, log-probability)`` pairs. A token counts for a choice as
    :func:`counts_for` says; several such tokens add up. A choice with no such token gets None:
    its probability is below the least likely alternative listed, and counts as 0.
    """
    import math

    found: dict[str, float | None] = {}
    for choice in choices:
        probs = [math.exp(lp) for token, lp in candidates if counts_for(token, choice)]
        found[choice] = math.log(sum(probs)) if probs and sum(probs) > 0 else None
    return found
