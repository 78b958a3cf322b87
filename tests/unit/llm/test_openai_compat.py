"""The OpenAI-compatible backend through the real openai client, against a local server."""

import json
import logging
import random

import pytest

from autorule.llm import LLMCallError
from autorule.llm.openai_compat import OpenAICompatLLM
from fakeserver import FakeLLMServer, FakeReply, closed_port

FAST_RETRY = {"max_attempts": 3, "initial_wait": 0.01, "max_wait": 0.02, "jitter": 0.0}
KEY = "sk-test-abcdefghijklmnopqrstuvwxyz"


def make(server, tmp_path, **kw) -> OpenAICompatLLM:
    settings = {
        "model": "served-r1",
        "base_url": server.url + "/v1",
        "api_key_env": "AUTORULE_TEST_API_KEY",
        "temperature": 0.6,
        "max_tokens": 64,
        "retry": FAST_RETRY,
        "cache_dir": tmp_path / "cache",
        "progress": False,
        **kw,
    }
    return OpenAICompatLLM(**settings)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("AUTORULE_TEST_API_KEY", KEY)


@pytest.mark.parametrize("how", ["field", "reasoning", "inline"])
def test_reasoning_is_split_from_the_answer(tmp_path, how):
    reply = FakeReply(text='["Be concise."]', reasoning="B rambles.", reasoning_as=how)
    with FakeLLMServer(lambda r: reply) as server:
        out = make(server, tmp_path).complete([{"role": "user", "content": "Why A?"}])
    assert (out.text, out.reasoning) == ('["Be concise."]', "B rambles.")
    assert out.input_tokens == 2 and out.output_tokens > 0
    [request] = server.requests
    assert request.body["model"] == "served-r1"
    assert request.body["temperature"] == 0.6 and request.body["max_tokens"] == 64


def test_rate_limit_is_retried_and_sdk_retries_are_off(tmp_path):
    def reply(request):
        return (
            FakeReply(status=429, message="slow down")
            if request.number == 1
            else FakeReply(text="ok")
        )

    with FakeLLMServer(reply) as server:
        out = make(server, tmp_path).complete([{"role": "user", "content": "hi"}])
        assert out.text == "ok" and out.retries == 1 and len(server.requests) == 2
    with FakeLLMServer(lambda r: FakeReply(status=503, message="overloaded")) as server:
        with pytest.raises(LLMCallError, match="gave up after 3 attempt"):
            make(server, tmp_path).complete([{"role": "user", "content": "hi again"}])
        assert len(server.requests) == 3  # ours only, never multiplied by the SDK's


def test_api_key_is_read_from_the_named_variable_only(tmp_path):
    with FakeLLMServer() as server:
        llm = make(server, tmp_path)
        llm.complete([{"role": "user", "content": "hi"}])
    assert llm.client.api_key == KEY
    cached = "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert KEY not in cached


def test_timeouts_are_retried(tmp_path):
    def reply(request):  # the first answer comes after the client stopped waiting
        late = request.number == 1
        return FakeReply(text="late" if late else "ok", delay=0.6 if late else 0.0)

    with FakeLLMServer(reply) as server:
        out = make(server, tmp_path, timeout=0.2).complete([{"role": "user", "content": "hi"}])
        assert out.text == "ok" and out.retries == 1 and len(server.requests) == 2
    with FakeLLMServer(lambda r: FakeReply(text="late", delay=0.5)) as server:
        llm = make(server, tmp_path, timeout=0.1)
        [failed] = llm.complete_all([[{"role": "user", "content": "hi again"}]], desc=None)
        assert len(server.requests) == 3
    assert failed.retries == 2 and "gave up after 3 attempt(s)" in failed.error
    assert "APITimeoutError" in failed.error


def test_refused_connections_are_retried(tmp_path):
    llm = OpenAICompatLLM(
        model="served-r1",
        base_url=f"http://127.0.0.1:{closed_port()}/v1",
        api_key_env="AUTORULE_TEST_API_KEY",
        temperature=0.6,
        max_tokens=64,
        retry={**FAST_RETRY, "max_attempts": 4},
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    [failed] = llm.complete_all([[{"role": "user", "content": "hi"}]], desc=None)
    assert failed.retries == 3 and "gave up after 4 attempt(s)" in failed.error
    assert "APIConnectionError" in failed.error


def test_the_cache_follows_the_model_not_the_endpoint(tmp_path):
    # Deliberate (autorule.llm.cache): a server restarted on another port keeps its answers.
    request = [{"role": "user", "content": "hi"}]
    with FakeLLMServer() as first:
        answer = make(first, tmp_path).complete(request)
    with FakeLLMServer() as moved:
        again = make(moved, tmp_path).complete(request)
        other_model = make(moved, tmp_path, model="another-model").complete(request)
    assert moved.url != first.url and again.cached and again.text == answer.text
    assert not other_model.cached and len(moved.requests) == 1


def test_corrupt_cache_entries_are_asked_again_and_reported_once(tmp_path, caplog):
    requests = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]
    with FakeLLMServer() as server:
        make(server, tmp_path).complete_all(requests, desc=None)
        llm = make(server, tmp_path)
        entries = [llm.cache.path(llm.cache_key(r)) for r in requests]
        entries[0].write_bytes(bytes(random.Random(0).randrange(256) for _ in range(64)))
        entries[1].write_text("{}")
        entries[2].write_text("[1, 2]")
        entries[3].write_text(json.dumps({"text": ""}))  # an empty answer cached as a success
        with caplog.at_level(logging.WARNING, logger="autorule.llm.cache"):
            # Each corrupt entry is read twice: two requests in the batch share it.
            out = llm.complete_all(requests + requests[:4], desc=None)
            assert len(server.requests) == 5 + 4  # the four corrupt entries were asked again
            assert [c.cached for c in out[:5]] == [False] * 4 + [True]
            assert all(c.ok and c.text for c in out)
            warned = [r.getMessage() for r in caplog.records]
            assert len(warned) == 4 and all("corrupt LLM cache entry" in w for w in warned)
            assert all(str(e) in w for e, w in zip(entries, warned, strict=False))
            # The answers were stored again: a third run replays everything, silently.
            assert all(c.cached for c in make(server, tmp_path).complete_all(requests, desc=None))
            assert len(server.requests) == 9 and len(caplog.records) == 4
