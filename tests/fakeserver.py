"""A local stand-in for LLM APIs: Bedrock Converse and OpenAI chat completions over real HTTP.

Tests and the extraction benchmark point the real boto3 and openai clients at it, so the wire
format, error mapping and retry paths are exercised without network access or credentials::

    with FakeLLMServer(reply=my_reply, delay=0.2) as server:
        ...  # llm.endpoint_url=server.url (bedrock) or llm.base_url=server.url + "/v1" (openai)

``reply(request)`` receives a :class:`FakeRequest` (with the request's headers, so a reply can
echo ``Authorization`` back as some gateways do) and returns a :class:`FakeReply`: the answer,
optional reasoning, an error status, or a raw body (not JSON, JSON of the wrong shape).
``server.requests`` logs every request received (and ``log_path``, when given, gets one JSON line
per request, for a server run in another process). ``tls=self_signed_cert(folder)`` serves HTTPS,
which botocore requires before it sends a Bedrock API key (``AWS_BEARER_TOKEN_BEDROCK``); point
the client at the certificate with ``AWS_CA_BUNDLE``.

Helpers for answers that misbehave: :func:`echoing_authorization` quotes the request's
``Authorization`` header in every answer (with :func:`files_holding` to look for the key in an
artifact), :func:`quoting_grader` quotes the graded reply after its score.

OpenAI requests with ``logprobs: true`` get the reply's ``top_logprobs`` back in the API's format
(``choices[0].logprobs.content[0].top_logprobs``, cut to the ``top_logprobs`` asked for).
:class:`ScriptedJudge` is a rule judge for it: it says yes exactly for known (response, rule)
pairs, as a generated ``[[Yes]]``/``[[No]]`` verdict or as first-token log-probabilities.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

BEDROCK, OPENAI = "bedrock", "openai"
# What writing to (or reading from) a socket the client has closed raises.
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


@dataclass
class FakeRequest:
    """One request as the server saw it."""

    protocol: str  # "bedrock" or "openai"
    model: str
    prompt: str  # the last user message's text (a final assistant message: the reply's opening)
    body: dict[str, Any]
    number: int  # 1-based count of requests received so far (this one included)
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased: "authorization"


@dataclass
class FakeReply:
    """What to answer: text and reasoning, or an error status with a message."""

    text: str = ""
    reasoning: str = ""
    # How the reasoning travels. bedrock: always a reasoningContent block. openai: "field"
    # (message.reasoning_content), "reasoning" (message.reasoning) or "inline" (<think> tags).
    reasoning_as: str = "field"
    status: int = 200
    error_type: str = ""  # Bedrock's x-amzn-ErrorType, e.g. ThrottlingException
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering, on top of the server's delay
    # Sent as the body instead of the protocol's JSON (with ``status``), e.g. b"<html>oops" or a
    # JSON document that lacks the answer, for clients' handling of broken gateways.
    raw_body: bytes | None = None
    # OpenAI, requests with logprobs: (token, log-probability) alternatives for the first token,
    # most likely first; None sends no logprobs even when asked.
    top_logprobs: list[tuple[str, float]] | None = None


class ScriptedJudge:
    """A rule judge that says yes exactly for the (response, rule) pairs in ``yes``.

    It finds the pair in the prompt: the longest of ``rules`` and the one of ``responses`` found
    in it (use distinctive texts). Requests with ``logprobs`` get "Yes" with probability
    ``p_yes`` (or ``1 - p_yes`` for a no) among their top alternatives; the others get a short
    reason ending in ``[[Yes]]``/``[[No]]``. ``replies`` overrides the answer for given pairs
    (garbled verdicts, missing choices).
    """

    def __init__(
        self,
        responses: Iterable[str],
        rules: Iterable[str],
        yes: Iterable[tuple[str, str]],
        p_yes: float = 0.9,
        replies: dict[tuple[str, str], FakeReply] | None = None,
    ):
        self.responses, self.rules = list(responses), list(rules)
        self.yes, self.p_yes, self.replies = set(yes), p_yes, dict(replies or {})

    def pair(self, prompt: str) -> tuple[str, str]:
        rule = max((r for r in self.rules if r in prompt), key=len)
        response = max((r for r in self.responses if r in prompt), key=len)
        return response, rule

    def __call__(self, request: FakeRequest) -> FakeReply:
        pair = self.pair(request.prompt)
        if pair in self.replies:
            return self.replies[pair]
        says_yes = pair in self.yes
        if request.body.get("logprobs"):
            p = self.p_yes if says_yes else 1 - self.p_yes
            alternatives = [("Yes", math.log(p)), ("No", math.log(1 - p)), ("The", math.log(1e-4))]
            alternatives.sort(key=lambda alt: -alt[1])
            return FakeReply(text=alternatives[0][0], top_logprobs=alternatives)
        verdict = "[[Yes]]" if says_yes else "[[No]]"
        return FakeReply(text=f"Checked the response against the rule.\n\n{verdict}")


def echo_rules(request: FakeRequest) -> FakeReply:
    """Default reply: a JSON array of two rules derived from the prompt, with some reasoning.

    The reasoning is unique per prompt (so the next step's prompts differ too); the rules repeat
    across prompts (so merging has duplicates to fold).
    """
    digest = hashlib.sha256(request.prompt.encode()).hexdigest()
    rules = [
        f"The reply follows instruction number {int(digest, 16) % 7}.",
        "The reply is clear and concise.",
    ]
    return FakeReply(text=json.dumps(rules), reasoning=f"Thinking about request {digest[:16]}.")


def echoing_authorization(reply: Callable[[FakeRequest], FakeReply]):
    """``reply`` with the request's ``Authorization`` header quoted on the first line of every
    ordinary answer, as a gateway's debug output might: for tests that no artifact keeps a key."""

    def echo(request: FakeRequest) -> FakeReply:
        answer = reply(request)
        if answer.status != 200 or answer.raw_body is not None:
            return answer
        header = request.headers.get("authorization", "")
        return replace(answer, text=f"(request sent with {header})\n{answer.text}")

    return echo


def quoting_grader(score: str):
    """A rubric grader that gives ``score`` in ``<score>`` tags, then quotes the reply it graded
    (found between ``<reply>`` tags in the grader prompt), as graders that explain themselves do:
    a reply holding a score tag of its own then follows the grader's."""

    def grade(request: FakeRequest) -> FakeReply:
        reply = request.prompt.split("<reply>\n", 1)[-1].split("\n</reply>", 1)[0]
        return FakeReply(text=f"<score>{score}</score>\nThe reply I graded:\n{reply}")

    return grade


def files_holding(folder, secret: str) -> list[str]:
    """The files under ``folder`` whose content holds ``secret``: parquet tables read back as
    text (their pages are compressed), every other file as bytes."""
    import pandas as pd

    found = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            data = pd.read_parquet(path).to_json().encode()
        else:
            data = path.read_bytes()
        if secret.encode() in data or json.dumps(secret)[1:-1].encode() in data:
            found.append(str(path.relative_to(folder)))
    return found


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default listen backlog (5) drops connections when dozens of clients connect at once.
    request_queue_size = 512

    def handle_error(self, request, client_address) -> None:
        # A client that timed out (or was interrupted) has closed its end; writing the late answer
        # then fails. That is the client's business, not a server bug: no traceback for it. Every
        # other error still prints one (socketserver's default).
        if isinstance(sys.exc_info()[1], _CLIENT_GONE):
            return
        super().handle_error(request, client_address)


class FakeLLMServer:
    """Serves Bedrock ``POST /model/{id}/converse`` and OpenAI ``POST /v1/chat/completions``."""

    def __init__(
        self,
        reply: Callable[[FakeRequest], FakeReply] = echo_rules,
        delay: float = 0.0,
        log_path: str | None = None,
        tls: tuple[str, str] | None = None,
    ):
        self.reply, self.delay, self.log_path = reply, delay, log_path
        self.requests: list[FakeRequest] = []
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), self._handler())
        scheme = "http"
        if tls is not None:  # (certificate file, key file)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}"
        # A short poll interval makes shutdown() quick (the default waits up to 0.5 s).
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _record(
        self, protocol: str, model: str, body: dict, headers: dict[str, str]
    ) -> FakeRequest:
        messages = body.get("messages", [])
        users = [m for m in messages if m.get("role") == "user"]
        last = users[-1] if users else (messages[-1] if messages else {})
        content = last.get("content", "")
        if isinstance(content, list):  # Bedrock: a list of content blocks
            content = "".join(block.get("text", "") for block in content)
        with self._lock:
            number = len(self.requests) + 1
            request = FakeRequest(protocol, model, content, body, number, headers)
            self.requests.append(request)
            if self.log_path:  # for a server run in another process
                with open(self.log_path, "a") as f:
                    f.write(json.dumps({"protocol": protocol, "model": model, "body": body}) + "\n")
        return request

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real services offer
            # Headers and body go out in separate writes; with Nagle's algorithm on, the body
            # would wait for the client's delayed ACK (~40 ms per call on Linux).
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                path = unquote(self.path)
                if path.startswith("/model/") and path.endswith("/converse"):
                    protocol, model = BEDROCK, path[len("/model/") : -len("/converse")]
                elif path.rstrip("/").endswith("/chat/completions"):
                    protocol, model = OPENAI, body.get("model", "")
                else:
                    return self._send(404, {"message": f"no route {path}"})
                request = server._record(
                    protocol, model, body, {k.lower(): v for k, v in self.headers.items()}
                )
                if server.delay:
                    time.sleep(server.delay)
                reply = server.reply(request)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.raw_body is not None:
                    return self._send_bytes(reply.status, reply.raw_body, reply.headers)
                if reply.status != 200:
                    return self._error(protocol, reply)
                payload = (_bedrock_body if protocol == BEDROCK else _openai_body)(request, reply)
                self._send(200, payload, reply.headers)

            def _error(self, protocol: str, reply: FakeReply) -> None:
                headers = dict(reply.headers)
                if protocol == BEDROCK:
                    if reply.error_type:
                        headers["x-amzn-ErrorType"] = reply.error_type
                    payload: dict = {"message": reply.message or reply.error_type}
                else:
                    payload = {
                        "error": {
                            "message": reply.message,
                            "type": reply.error_type,
                            "code": reply.status,
                        }
                    }
                self._send(reply.status, payload, headers)

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                self._send_bytes(status, json.dumps(payload).encode(), headers)

            def _send_bytes(self, status: int, data: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _tokens(text: str) -> int:
    return len(text.split())


def _bedrock_body(request: FakeRequest, reply: FakeReply) -> dict:
    content: list[dict] = []
    if reply.reasoning:
        content.append({"reasoningContent": {"reasoningText": {"text": reply.reasoning}}})
    content.append({"text": reply.text})
    n_in, n_out = _tokens(request.prompt), _tokens(reply.reasoning + " " + reply.text)
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": n_in, "outputTokens": n_out, "totalTokens": n_in + n_out},
        "metrics": {"latencyMs": 1},
    }


def _openai_body(request: FakeRequest, reply: FakeReply) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.reasoning:
        if reply.reasoning_as == "inline":
            message["content"] = f"<think>{reply.reasoning}</think>{reply.text}"
        else:
            message["reasoning_content" if reply.reasoning_as == "field" else "reasoning"] = (
                reply.reasoning
            )
    n_in, n_out = _tokens(request.prompt), _tokens(reply.reasoning + " " + reply.text)
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
    if request.body.get("logprobs") and reply.top_logprobs is not None:
        listed = reply.top_logprobs[: int(request.body.get("top_logprobs") or 0)]
        token, logprob = reply.top_logprobs[0] if reply.top_logprobs else (reply.text, 0.0)
        choice["logprobs"] = {
            "content": [
                {
                    "token": token,
                    "logprob": logprob,
                    "bytes": list(token.encode()),
                    "top_logprobs": [
                        {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in listed
                    ],
                }
            ]
        }
    return {
        "id": f"chatcmpl-{request.number}",
        "object": "chat.completion",
        "created": 0,
        "model": request.model,
        "choices": [choice],
        "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
    }


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connecting to it is refused at once."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def self_signed_cert(folder) -> tuple[str, str] | None:
    """A certificate and key for 127.0.0.1 made with the ``openssl`` command, valid two days
    (files in ``folder``); None when ``openssl`` is not installed."""
    if shutil.which("openssl") is None:
        return None
    cert, key = f"{folder}/cert.pem", f"{folder}/key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "2",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", key, "-out", cert,
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
