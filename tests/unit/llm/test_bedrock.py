"""The Bedrock backend through the real boto3 client, against a local Converse-speaking server."""

import json
import logging

import pytest
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
    SSLError,
)

from autorule.core.secrets import RedactingFilter
from autorule.llm import LLMCallError
from autorule.llm.bedrock import BedrockLLM
from fakeserver import FakeLLMServer, FakeReply, closed_port

ACCESS_KEY = "AKIAFAKEFAKEFAKE1234"
SECRET_KEY = "fake-secret-key-for-tests-0123456789"
FAST_RETRY = {"max_attempts": 3, "initial_wait": 0.01, "max_wait": 0.02, "jitter": 0.0}
MODEL = "us.deepseek.r1-v1:0"


@pytest.fixture(autouse=True)
def fake_aws(monkeypatch, tmp_path):
    """Fake credentials from the environment only: no ~/.aws files, no instance metadata."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def make(server, tmp_path, **kw) -> BedrockLLM:
    settings = {
        "model": MODEL,
        "region": "us-west-2",
        "endpoint_url": server.url,
        "temperature": 0.6,
        "max_tokens": 64,
        "retry": FAST_RETRY,
        "cache_dir": tmp_path / "cache",
        "progress": False,
        **kw,
    }
    return BedrockLLM(**settings)


def test_answer_and_reasoning_blocks(tmp_path):
    reply = FakeReply(text='["Be concise."]', reasoning="The user liked brevity.")
    with FakeLLMServer(lambda r: reply) as server:
        out = make(server, tmp_path).complete(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why A?"}]
        )
    assert out.text == '["Be concise."]'
    assert out.reasoning == "The user liked brevity."
    assert out.input_tokens == 2 and out.output_tokens > 0 and out.retries == 0
    [request] = server.requests
    assert request.model == MODEL  # the ':' in the id survives URL quoting
    assert request.body["inferenceConfig"] == {"temperature": 0.6, "maxTokens": 64}
    assert request.body["system"] == [{"text": "Be brief."}]
    assert request.body["messages"] == [{"role": "user", "content": [{"text": "Why A?"}]}]


def test_throttling_is_retried_then_succeeds(tmp_path):
    def reply(request):
        if request.number == 1:
            return FakeReply(
                status=429,
                error_type="ThrottlingException",
                message="Too many requests, please wait before trying again.",
            )
        return FakeReply(text="ok")

    with FakeLLMServer(reply) as server:
        out = make(server, tmp_path).complete([{"role": "user", "content": "hi"}])
    assert out.text == "ok" and out.retries == 1
    assert len(server.requests) == 2


def test_persistent_5xx_ends_in_a_clear_error(tmp_path):
    reply = FakeReply(status=500, error_type="InternalServerException", message="boom")
    with FakeLLMServer(lambda r: reply) as server:
        llm = make(server, tmp_path)
        with pytest.raises(LLMCallError, match=r"gave up after 3 attempt.*InternalServerException"):
            llm.complete([{"role": "user", "content": "hi"}])
        # botocore's own retries are off: exactly our 3 attempts reached the server, not 3 x 3.
        assert len(server.requests) == 3
        [failed] = llm.complete_all([[{"role": "user", "content": "hi"}]], desc=None)
    assert not failed.ok and "boom" in failed.error and failed.retries == 2
    # botocore's "(reached max retries: 0)" (its own retries are off) must not sit beside ours.
    assert "max retries" not in failed.error
    assert "InternalServerException (HTTP 500): boom" in failed.error


def test_client_errors_are_not_retried(tmp_path):
    reply = FakeReply(status=400, error_type="ValidationException", message="bad model id")
    with FakeLLMServer(lambda r: reply) as server:
        with pytest.raises(
            LLMCallError, match="not retryable, stopped after 1 attempt.*bad model id"
        ):
            make(server, tmp_path).complete([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 1


def test_answers_are_cached_and_replayed(tmp_path):
    requests = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
    with FakeLLMServer() as server:
        first = make(server, tmp_path, max_concurrency=4).complete_all(requests, desc=None)
        again = make(server, tmp_path).complete_all(requests, desc=None)
        assert len(server.requests) == 5
        other = make(server, tmp_path, temperature=0.0).complete_all(requests[:1], desc=None)
    assert [c.text for c in first] == [c.text for c in again]
    assert all(c.cached for c in again) and not any(c.cached for c in first)
    assert not other[0].cached  # a different parameter is a different request


def test_credentials_stay_out_of_logs_and_cache(tmp_path, caplog):
    # botocore's DEBUG log prints the Authorization header, access key id included; the redaction
    # filter that `python -m autorule` installs on every handler masks it.
    caplog.handler.addFilter(RedactingFilter())
    caplog.set_level(logging.DEBUG)
    with FakeLLMServer() as server:
        make(server, tmp_path).complete([{"role": "user", "content": "hi"}])
    cached = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert json.loads(cached)["model"] == MODEL
    for text in (caplog.text, cached):
        assert SECRET_KEY not in text and ACCESS_KEY not in text


def test_read_timeout_is_retried_then_succeeds(tmp_path):
    def reply(request):  # the first answer comes after the client stopped waiting
        late = request.number == 1
        return FakeReply(text="late" if late else "ok", delay=0.6 if late else 0.0)

    with FakeLLMServer(reply) as server:
        out = make(server, tmp_path, read_timeout=0.2).complete([{"role": "user", "content": "hi"}])
    assert out.text == "ok" and out.retries == 1 and len(server.requests) == 2


def test_read_timeouts_give_up_with_a_clear_error(tmp_path):
    with FakeLLMServer(lambda r: FakeReply(text="late", delay=0.5)) as server:
        llm = make(server, tmp_path, read_timeout=0.1)
        [failed] = llm.complete_all([[{"role": "user", "content": "hi"}]], desc=None)
        assert len(server.requests) == 3
    assert failed.retries == 2
    assert failed.error.startswith(
        f"bedrock call to {MODEL} failed (gave up after 3 attempt(s), llm.retry.max_attempts=3): "
        "ReadTimeoutError: Read timeout on endpoint URL"
    )


def test_refused_connections_are_retried(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="autorule.llm.base")
    llm = BedrockLLM(
        model=MODEL,
        region="us-west-2",
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        temperature=0.6,
        max_tokens=64,
        retry={**FAST_RETRY, "max_attempts": 4},
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    [failed] = llm.complete_all([[{"role": "user", "content": "hi"}]], desc=None)
    assert failed.retries == 3 and "gave up after 4 attempt(s)" in failed.error
    assert "EndpointConnectionError: Could not connect" in failed.error
    assert caplog.text.count("retrying") == 3  # one log line per retry, none after the last
    assert not list((tmp_path / "cache").rglob("*.json"))  # failures are never cached


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (EndpointConnectionError(endpoint_url="http://x"), True),  # connection refused
        (ConnectTimeoutError(endpoint_url="http://x"), True),
        (ReadTimeoutError(endpoint_url="http://x"), True),
        (ConnectionClosedError(endpoint_url="http://x"), True),
        (SSLError(endpoint_url="http://x", error="certificate verify failed"), False),
        (NoCredentialsError(), False),
        (ParamValidationError(report="bad"), False),
    ],
)
def test_transport_errors_that_are_retried(tmp_path, error, retryable):
    with FakeLLMServer() as server:
        assert make(server, tmp_path).is_retryable(error) is retryable
