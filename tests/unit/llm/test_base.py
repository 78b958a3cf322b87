"""Backend selection, the response cache, the optional vLLM extra, and the llm config files."""

import re
import sys
import time
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from autorule import llm as llms
from autorule.core.artifacts import config_hash
from autorule.core.config import CONF_DIR, compose
from autorule.llm.cache import ResponseCache
from autorule.llm.vllm_offline import VLLMOfflineLLM

BACKENDS = ("bedrock", "openai", "hf", "vllm")


def test_cache_round_trip_and_corrupt_entries(tmp_path):
    cache = ResponseCache(tmp_path)
    assert cache.get("ab" * 32) is None
    cache.put("ab" * 32, {"text": "x"})
    assert cache.get("ab" * 32) == {"text": "x"}
    assert not list(tmp_path.rglob("*.tmp"))  # written to a temporary file, then renamed
    cache.path("cd" * 32).parent.mkdir(parents=True)
    cache.path("cd" * 32).write_text("{half a fi")
    assert cache.get("cd" * 32) is None


@pytest.mark.parametrize("name", BACKENDS)
def test_every_llm_key_has_a_comment(name):
    for path in (CONF_DIR / "llm" / f"{name}.yaml", CONF_DIR / "llm_common.yaml"):
        for line in path.read_text().splitlines():
            if re.match(r"^\s*[A-Za-z_]+:\s*\S", line) and "#" not in line:
                pytest.fail(f"{path.name}: key without a comment: {line!r}")


def test_build_picks_the_backend_from_config(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unused-in-this-test-0000000000")
    cfg = compose(["llm@extract.llm=openai", f"paths.root={tmp_path}"])
    backend = llms.build(cfg, "extract.llm")
    assert type(backend).__name__ == "OpenAICompatLLM"
    assert backend.cache.folder == Path(cfg.paths.cache) / "llm"
    with pytest.raises(TypeError, match="unexpected keyword"):  # typos in config fail loudly
        llms.build(
            compose(["llm@extract.llm=openai", "+extract.llm.temprature=0.1"]), "extract.llm"
        )


def test_runtime_keys_do_not_change_the_artifact_hash(tmp_path):
    base = ["stage=extract", "llm@extract.llm=bedrock", f"paths.root={tmp_path}"]
    h = config_hash(compose(base), "extract")
    assert h == config_hash(
        compose(
            [
                *base,
                "extract.llm.max_concurrency=4",
                "extract.llm.retry.max_attempts=2",
                "extract.llm.progress=false",
            ]
        ),
        "extract",
    )
    assert h != config_hash(compose([*base, "extract.llm.model=other"]), "extract")
    assert h != config_hash(compose([*base, "extract.rules_from=explanation"]), "extract")


def test_profiles_pick_backends_and_sizes():
    tiny, paper = compose([]), compose(["profile=paper"])
    assert tiny.extract.llm._target_.endswith("HFLLM") and tiny.extract.num_examples == 8
    assert (
        paper.extract.llm._target_.endswith("BedrockLLM")
        and paper.extract.llm.model == "us.deepseek.r1-v1:0"
    )
    assert paper.extract.num_examples == 256 and paper.extract.examples_per_question == 8
    assert compose(["llm@extract.llm=openai"]).extract.llm._target_.endswith(
        "OpenAICompatLLM"
    )  # command line wins
    for name in BACKENDS:
        OmegaConf.to_container(compose([f"llm@extract.llm={name}"]).extract.llm, resolve=True)


def test_vllm_missing_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(ImportError, match=re.escape("pip install 'autorule[vllm]'")):
        VLLMOfflineLLM(model="m", temperature=0.0, max_tokens=8)


def test_vllm_backend_with_a_stand_in_engine(monkeypatch, tmp_path):
    """The engine calls, checked with a stand-in module (vLLM itself needs a GPU)."""
    seen = {}

    class SamplingParams:
        def __init__(self, **kw):
            seen["sampling"] = kw

    class LLM:
        def __init__(self, **kw):
            seen["engine"] = kw

        def chat(self, conversations, params, use_tqdm):
            out = types.SimpleNamespace
            return [
                out(
                    prompt_token_ids=[1, 2],
                    outputs=[out(text=f'<think>r{i}</think>["rule {i}"]', token_ids=[1, 2, 3])],
                )
                for i, _ in enumerate(conversations)
            ]

    monkeypatch.setitem(
        sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)
    )
    backend = VLLMOfflineLLM(
        model="m", temperature=0.6, max_tokens=8, batch_size=2, cache_dir=tmp_path, progress=False
    )
    outs = backend.complete_all([[{"role": "user", "content": str(i)}] for i in range(3)])
    assert [(o.reasoning, o.text) for o in outs] == [
        ("r0", '["rule 0"]'),
        ("r1", '["rule 1"]'),
        ("r0", '["rule 0"]'),
    ]  # batches of 2
    assert seen["sampling"]["max_tokens"] == 8 and seen["engine"]["model"] == "m"
    assert all(o.input_tokens == 2 and o.output_tokens == 3 for o in outs)
    # A fully cached re-run never builds the engine (no weights loaded, no GPU needed).
    del seen["engine"]
    replay = VLLMOfflineLLM(
        model="m", temperature=0.6, max_tokens=8, batch_size=2, cache_dir=tmp_path, progress=False
    )
    assert all(o.cached for o in replay.complete_all([[{"role": "user", "content": "0"}]]))
    assert "engine" not in seen


def test_vllm_verdicts_with_a_stand_in_engine(monkeypatch, tmp_path):
    """Verdicts ask the engine for one token with its top alternatives (vLLM needs a GPU)."""
    seen = {}
    out = types.SimpleNamespace

    class SamplingParams:
        def __init__(self, **kw):
            seen.setdefault("sampling", []).append(kw)

    class LLM:
        def __init__(self, **kw):
            pass

        def chat(self, conversations, params, use_tqdm):
            first = {
                7: out(logprob=-0.1, decoded_token="Yes"),
                9: out(logprob=-2.5, decoded_token="No"),
            }
            return [
                out(prompt_token_ids=[1, 2, 3], outputs=[out(text="Yes", logprobs=[first])])
                for _ in conversations
            ]

    monkeypatch.setitem(
        sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)
    )
    backend = VLLMOfflineLLM(model="m", temperature=0.0, max_tokens=512, cache_dir=tmp_path)
    [verdict] = backend.verdict_all([[{"role": "user", "content": "ok?"}]], ("Yes", "No"), 7)
    assert verdict.choice_logprobs == {"Yes": pytest.approx(-0.1), "No": pytest.approx(-2.5)}
    assert seen["sampling"][-1]["max_tokens"] == 1 and seen["sampling"][-1]["logprobs"] == 7


class Scripted(llms.base.LocalLLM):
    """A local backend that answers instantly and can be told to 'crash' on a given batch."""

    backend = "scripted"

    def __init__(self, **kw):
        super().__init__(
            model="m", temperature=0.0, max_tokens=8, batch_size=2, progress=False, **kw
        )
        # Set after construction: constructor arguments are the backend's settings (cache key).
        self.crash_on_batch, self.seen = None, []

    def generate_batch(self, batch):
        if len(self.seen) == self.crash_on_batch:
            raise KeyboardInterrupt
        self.seen.append([m[0]["content"] for m in batch])
        return [llms.Completion(text=f"answer to {m[0]['content']}") for m in batch]


def test_identical_requests_are_sent_once(tmp_path):
    backend = Scripted(cache_dir=tmp_path)
    requests = [[{"role": "user", "content": c}] for c in "abab"]
    outs = backend.complete_all(requests)
    assert backend.seen == [["a", "b"]]
    assert [o.text for o in outs] == ["answer to a", "answer to b"] * 2
    assert [o.cached for o in outs] == [False, False, True, True]


def test_ctrl_c_keeps_finished_batches(tmp_path):
    requests = [[{"role": "user", "content": str(i)}] for i in range(6)]
    with pytest.raises(KeyboardInterrupt):
        crashing = Scripted(cache_dir=tmp_path)
        crashing.crash_on_batch = 2
        crashing.complete_all(requests)
    again = Scripted(cache_dir=tmp_path)
    outs = again.complete_all(requests)
    assert again.seen == [["4", "5"]]  # the first two batches came from the cache
    assert [o.cached for o in outs] == [True] * 4 + [False] * 2


def test_ctrl_c_during_remote_calls_loses_nothing_finished(tmp_path):
    from autorule.llm.openai_compat import OpenAICompatLLM
    from fakeserver import FakeLLMServer

    requests = [[{"role": "user", "content": str(i)}] for i in range(12)]
    answered = []

    def stop_after_three(i, completion):
        answered.append(i)
        if len(answered) == 3:
            raise KeyboardInterrupt

    with FakeLLMServer(delay=0.05) as server:
        backend = OpenAICompatLLM(
            model="m",
            base_url=server.url + "/v1",
            api_key_env=None,
            temperature=0.0,
            max_tokens=8,
            max_concurrency=2,
            cache_dir=tmp_path,
            progress=False,
        )
        with pytest.raises(KeyboardInterrupt):
            backend.complete_all(requests, on_result=stop_after_three)
        time.sleep(0.3)  # calls in flight at the interrupt finish and reach the cache
        first = len(server.requests)
        assert first < len(requests)  # queued calls were dropped
        outs = backend.complete_all(requests)
    prompts = [r.prompt for r in server.requests]
    assert len(prompts) == len(set(prompts)) == len(requests)  # nothing was sent twice
    assert sum(o.cached for o in outs) == first


def _hang_up_while_waiting(server) -> None:
    """Sends a request, then resets the connection before the (delayed) answer is written."""
    import json
    import socket
    import struct

    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        while not server.requests:
            time.sleep(0.01)
        # SO_LINGER with a zero timeout: close() sends a reset, as a client giving up may.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_fake_server_is_quiet_when_a_client_hangs_up(capfd):
    import threading

    from fakeserver import FakeLLMServer, FakeReply

    handlers = []  # the server thread that answers each request (replies run in it)

    def late(request):
        handlers.append(threading.current_thread())
        return FakeReply(text="late", delay=0.3)

    def broken(request):
        handlers.append(threading.current_thread())
        raise KeyError("a bug in the reply function")

    for reply in (late, broken):
        with FakeLLMServer(reply) as server:
            _hang_up_while_waiting(server)
        handlers[-1].join(timeout=10)  # request threads outlive the server's exit
    # The late write fails silently; a genuine error still prints its traceback.
    err = capfd.readouterr().err
    assert "Traceback" in err and "ConnectionResetError" not in err and "BrokenPipe" not in err
    assert "KeyError: 'a bug in the reply function'" in err


# --------------------------------------------------------------------------------------------
# Empty answers, keys named by role, and what each role's calls cost


def served(protocol, server, tmp_path, monkeypatch, **kw):
    """A served backend pointed at ``server``, built as its own class (no role set)."""
    monkeypatch.setenv("AUTORULE_TEST_API_KEY", "sk-test-abcdefghijklmnopqrstuvwxyz")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE1234")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-for-empty-answer-tests-0000")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    common = {
        "temperature": 0.0,
        "max_tokens": 16,
        "retry": {"max_attempts": 8, "initial_wait": 0.01, "max_wait": 0.02, "jitter": 0},
        "cache_dir": tmp_path / "cache",
        "progress": False,
        **kw,
    }
    if protocol == "openai":
        from autorule.llm.openai_compat import OpenAICompatLLM

        common.setdefault("model", "served")
        return OpenAICompatLLM(
            base_url=server.url + "/v1", api_key_env="AUTORULE_TEST_API_KEY", **common
        )
    from autorule.llm.bedrock import BedrockLLM

    common.setdefault("model", "served")
    return BedrockLLM(region="us-west-2", endpoint_url=server.url, **common)


HI = [{"role": "user", "content": "say something"}]


@pytest.mark.parametrize("protocol", ["openai", "bedrock"])
def test_an_empty_answer_the_model_generated_is_its_answer(protocol, tmp_path, monkeypatch):
    # A greedy model that emits only special tokens: "" with finish_reason "length" and tokens
    # generated. Retrying at temperature 0 gives the same, so it is answered once, not cached.
    from fakeserver import FakeLLMServer, FakeReply

    reply = FakeReply(text="", finish_reason="length", output_tokens=16)
    with FakeLLMServer(lambda r: reply) as server:
        llm = served(protocol, server, tmp_path, monkeypatch)
        [answer] = llm.complete_all([HI], desc=None)
        assert len(server.requests) == 1
    assert answer.ok and answer.empty and answer.text == "" and answer.retries == 0
    assert answer.finish_reason in ("length", "max_tokens") and answer.output_tokens == 16
    assert not list((tmp_path / "cache").rglob("*.json")), "an empty answer was cached"
    assert llm.usage.record()["empty_answers"] == 1


@pytest.mark.parametrize("protocol", ["openai", "bedrock"])
def test_an_empty_answer_with_nothing_generated_is_asked_once_more(protocol, tmp_path, monkeypatch):
    from fakeserver import FakeLLMServer, FakeReply

    with FakeLLMServer(lambda r: FakeReply(text="")) as server:  # no tokens out
        llm = served(protocol, server, tmp_path, monkeypatch)
        [answer] = llm.complete_all([HI], desc=None)
        assert len(server.requests) == 2  # once more, not retry.max_attempts=8 times
    assert answer.ok and answer.empty and answer.retries == 1
    assert not list((tmp_path / "cache").rglob("*.json"))


def test_a_local_backend_returns_an_empty_answer_the_same_way(tmp_path):
    from autorule.llm.base import Completion, LocalLLM

    class Silent(LocalLLM):
        backend = "silent"

        def generate_batch(self, batch):
            return [Completion(text="", finish_reason="stop", output_tokens=1) for _ in batch]

    llm = Silent(model="m", temperature=0.0, max_tokens=8, cache_dir=tmp_path, progress=False)
    [answer] = llm.complete_all([HI], desc=None)
    assert answer.ok and answer.empty and answer.generated
    assert not list(tmp_path.rglob("*.json"))


def test_errors_name_the_retry_key_of_the_role(make_cfg, monkeypatch):
    from fakeserver import FakeLLMServer, FakeReply

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-abcdefghijklmnopqrstuvwxyz")
    with FakeLLMServer(lambda r: FakeReply(status=503, message="down")) as server:
        cfg = make_cfg(
            "llm@judge.llm=openai",
            f"judge.llm.base_url={server.url}/v1",
            "judge.llm.retry.max_attempts=2",
            "judge.llm.retry.initial_wait=0.01",
            "judge.llm.retry.jitter=0",
            "judge.llm.progress=false",
        )
        [failed] = llms.build(cfg, "judge.llm").complete_all([HI], desc=None)
    assert "judge.llm.retry.max_attempts=2" in failed.error
    assert failed.error.startswith("judge.llm (openai) call to")


def test_usage_is_read_from_literal_usage_blocks(tmp_path, monkeypatch):
    from fakeserver import FakeLLMServer, FakeReply

    # The fake server's usage block: one token per word, prompt and answer.
    replies = {"one two three": FakeReply(text="a b"), "four five": FakeReply(status=400)}
    with FakeLLMServer(lambda r: replies[r.prompt]) as server:
        llm = served("openai", server, tmp_path, monkeypatch, price={"input": 2.0, "output": 8.0})
        requests = [[{"role": "user", "content": p}] for p in replies]
        llm.complete_all(requests, desc=None)
        llm.complete_all(requests[:1], desc=None)  # replayed from the cache: a hit, no tokens
    record = llm.usage.record(llm.price)
    assert record["calls"] == 3 and record["cache_hits"] == 1 and record["failed_calls"] == 1
    assert (record["input_tokens"], record["output_tokens"]) == (3, 2)
    assert record["cost_usd"] == pytest.approx((3 * 2.0 + 2 * 8.0) / 1e6)
    assert (
        record["latency_p50_s"] is not None and record["latency_p95_s"] >= record["latency_p50_s"]
    )
    assert llms.usage_record({"judge.llm": llm})["judge.llm"]["calls"] == 3


def test_usage_without_a_usage_block_is_counted_or_marked_unknown(make_cfg, tmp_path, monkeypatch):
    from autorule.data.models import resolve
    from fakeserver import FakeLLMServer, FakeReply

    with FakeLLMServer(lambda r: FakeReply(text="a short answer", usage=False)) as server:
        unknown = served(
            "openai", server, tmp_path / "a", monkeypatch, price={"input": 1, "output": 1}
        )
        unknown.complete_all([HI], desc=None)
        record = unknown.usage.record(unknown.price)
        assert record["input_tokens"] is None and record["output_tokens"] is None
        assert record["unknown_token_calls"] == 1 and record["cost_usd"] is None
        # A model whose tokenizer is on this machine: counted with it.
        folder = resolve(make_cfg(), "policy")
        counted = served("openai", server, tmp_path / "b", monkeypatch, model=str(folder))
        [answer] = counted.complete_all([HI], desc=None)
    assert answer.tokens_from == "tokenizer" and answer.output_tokens > 0
    assert counted.usage.record()["unknown_token_calls"] == 0


@pytest.mark.parametrize("backend", ["openai", "bedrock"])
def test_roles_inside_the_training_loop_time_out_after_a_minute(backend, make_cfg, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-abcdefghijklmnopqrstuvwxyz")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE1234")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-for-timeout-tests-000000")
    cfg = make_cfg(
        *(f"llm@{role}={backend}" for role in ("judge.llm", "rubric.grader", "extract.llm"))
    )
    for role in ("judge.llm", "rubric.grader"):
        llm = llms.build(cfg, role)
        if backend == "openai":
            assert llm.client.timeout == 60
        else:
            assert llm.client.meta.config.read_timeout == 60
    extract = llms.build(cfg, "extract.llm")  # outside the loop: the backend's own hour
    timeout = (
        extract.client.timeout if backend == "openai" else extract.client.meta.config.read_timeout
    )
    assert timeout == 3600


def test_a_hung_judge_fails_within_its_timeout(make_cfg, monkeypatch):
    from fakeserver import FakeLLMServer, FakeReply

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-abcdefghijklmnopqrstuvwxyz")
    with FakeLLMServer(lambda r: FakeReply(text="late", delay=3.0)) as server:
        cfg = make_cfg(
            "llm@judge.llm=openai",
            f"judge.llm.base_url={server.url}/v1",
            "judge.llm.timeout=0.2",
            "judge.llm.retry.max_attempts=2",
            "judge.llm.retry.initial_wait=0.01",
            "judge.llm.retry.jitter=0",
            "judge.llm.progress=false",
        )
        [failed] = llms.build(cfg, "judge.llm").complete_all([HI], desc=None)
    assert "APITimeoutError" in failed.error and "judge.llm.retry.max_attempts=2" in failed.error
    assert failed.latency_s < 2.0


def test_a_judge_that_emits_only_special_tokens_is_unparsed_not_retried(make_cfg, monkeypatch):
    # The served judge's answer is "" with finish_reason "length": one call per verdict, each
    # counted unparsed; nothing retried at temperature 0, nothing "failed", no crash.
    from autorule.rewards.judge import RuleJudge
    from fakeserver import FakeLLMServer, FakeReply

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-abcdefghijklmnopqrstuvwxyz")
    silent = FakeReply(text="", finish_reason="length", output_tokens=1024)
    with FakeLLMServer(lambda r: silent) as server:
        cfg = make_cfg(
            "llm@judge.llm=openai",
            f"judge.llm.base_url={server.url}/v1",
            "judge.llm.model=served-judge",
            "judge.mode=generate",
            "judge.llm.progress=false",
            "judge.llm.retry.initial_wait=0.01",
        )
        result = RuleJudge(cfg).judge(["One answer.", "Another."], ["Rule A.", "Rule B."])
        assert len(server.requests) == 4
    assert result.unparsed == 4 and result.failed == 0
