"""The extract stage against endpoints that misbehave, through the real boto3 and openai clients.

Each test plays one hostile case against the local test server: answers with nothing in them,
bodies that are not JSON, text that cannot be encoded, servers that echo credentials into their
error messages, tokens in URLs, and numbers that cannot work. What each guarantee is and which
test covers it: docs/reliability.md.
"""

import hashlib
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from autorule.core.artifacts import artifact_path, read_manifest, work_path
from autorule.core.config import ConfigError, compose
from autorule.core.secrets import MASK
from autorule.pipeline import run_stage
from autorule.stages import extract
from fakeserver import FakeLLMServer, FakeReply, self_signed_cert

pytestmark = pytest.mark.slow

ACCESS_KEY = "AKIAFAKEFAKEFAKE9012"
SECRET_KEY = "fake-secret-key-for-failure-tests-0123456789"
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLEsessiontoken0123456789abcdef"
OPENAI_KEY = "sk-proj-Gateway0123456789abcdefXYZ"
BEDROCK_API_KEY = "ABSKQmVkcm9ja0FQSUtleS1leGFtcGxlMDEyMzQ1Njc4OQ"
RULES = ["The reply answers the question.", "The reply is concise.", "The reply is polite."]


@pytest.fixture(autouse=True)
def credentials(monkeypatch, tmp_path):
    """Fake AWS and OpenAI credentials, from the environment only."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def config(root, tmp_path, *overrides):
    # The endpoint is transport and does not name the artifact, so tests sharing one root draw
    # their own pairs (a seed of their own) to get folders of their own.
    return compose(
        [
            "stage=extract",
            f"paths.root={root}",
            f"extract.seed={zlib.crc32(tmp_path.name.encode())}",
            f"extract.llm.cache_dir={tmp_path}/llm",
            "extract.llm.progress=false",
            "extract.llm.retry.initial_wait=0.01",
            "extract.llm.retry.max_wait=0.02",
            "extract.llm.retry.jitter=0",
            "extract.llm.retry.max_attempts=2",
            *overrides,
        ]
    )


def bedrock(server) -> list[str]:
    return ["llm@extract.llm=bedrock", f"extract.llm.endpoint_url={server.url}"]


def openai(server, base_url: str | None = None) -> list[str]:
    return [
        "llm@extract.llm=openai",
        f"extract.llm.base_url={base_url or server.url + '/v1'}",
        "extract.llm.model=served",
    ]


def healthy(request) -> FakeReply:
    """Answers the three prompts of conf/stage/extract.yaml with usable text."""
    if "Combine every group" in request.prompt:
        return FakeReply(text=json.dumps(RULES[:2]))
    if "----- analysis -----" in request.prompt:
        return FakeReply(text=json.dumps(RULES))
    return FakeReply(text="A was clearer.", reasoning=f"Reasoning about {request.prompt[-40:]}.")


class Outage:
    """Answers with ``broken`` until ``fixed`` is set, then like :func:`healthy`: one endpoint
    (one URL, so one artifact folder) that recovers."""

    def __init__(self, broken: FakeReply):
        self.broken, self.fixed = broken, False

    def __call__(self, request) -> FakeReply:
        return healthy(request) if self.fixed else self.broken


def is_reason(request) -> bool:
    return "===== Conversation A =====" in request.prompt


def odd(request) -> bool:
    """True for about half of the prompts, the same ones on every run."""
    return int(hashlib.sha256(request.prompt.encode()).hexdigest(), 16) % 2 == 1


def files_under(*folders: Path) -> dict[Path, str]:
    return {
        path: path.read_text(errors="replace")
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file() and path.suffix in {".json", ".jsonl", ".yaml", ".log", ".txt"}
    }


# --------------------------------------------------------------------------------------------
# Answers with nothing usable in them


BROKEN = {
    "openai, empty text": ("openai", FakeReply(text="")),
    "bedrock, empty text": ("bedrock", FakeReply(text="")),
    "bedrock, body not JSON": ("bedrock", FakeReply(raw_body=b"<html>502 Bad Gateway</html>")),
    "openai, body not JSON": ("openai", FakeReply(raw_body=b"upstream timed out")),
    "bedrock, no content block": ("bedrock", FakeReply(raw_body=b'{"output": {"message": {}}}')),
}


@pytest.mark.parametrize("case", BROKEN)
def test_unusable_answers_are_failed_calls_and_a_healthy_rerun_asks_again(root, tmp_path, case):
    backend, reply = BROKEN[case]
    llm = bedrock if backend == "bedrock" else openai
    outage = Outage(reply)
    with FakeLLMServer(outage) as server:
        cfg = config(root, tmp_path, *llm(server))
        with pytest.raises(RuntimeError, match="LLM calls failed") as err:
            extract.run(cfg)
        assert "UnusableAnswerError" in str(err.value)
        assert len(server.requests) == 2 * 8  # every reason call tried twice (max_attempts=2)
        assert not list((tmp_path / "llm").rglob("*.json")), "an unusable answer was cached"

        outage.fixed = True
        path = extract.run(cfg)
    counts = read_manifest(path)["counts"]
    assert len(server.requests) > 2 * 8 + 8  # asked again, not replayed from the cache
    assert counts["failed_calls"] == 0 and counts["fallback_rules_used"] == 0
    assert json.loads((path / "rules.json").read_text()) == RULES[:2]


def test_fallback_rules_are_provisional_and_a_healthy_run_recomputes_them(root, tmp_path):
    # An outage with a failure allowance and a fallback rule set commits the fallback...
    outage = Outage(FakeReply(text=""))
    with FakeLLMServer(outage) as server:
        cfg = config(root, tmp_path, *bedrock(server), "extract.max_failed_calls=100")
        first = extract.run(cfg)
        manifest = read_manifest(first)
        assert manifest["extract"]["rules_origin"] == "fallback"
        assert manifest["provisional"] is True and manifest["counts"]["failed_calls"] == 8
        # ...which a later run with a working endpoint recomputes, in the same folder.
        outage.fixed = True
        sent = len(server.requests)
        again = extract.run(cfg)
        assert again == first and len(server.requests) > sent + 8
        manifest = read_manifest(again)
        assert manifest["extract"]["rules_origin"] == "extracted" and "provisional" not in manifest
        assert json.loads((again / "rules.json").read_text()) == RULES[:2]
        sent = len(server.requests)
        assert extract.run(cfg) == again and len(server.requests) == sent  # now complete


def test_rules_extracted_despite_failed_calls_are_provisional(root, tmp_path):
    """Calls allowed to fail (extract.max_failed_calls) leave rules from fewer pairs: the next
    run recomputes them, sending again only the failed calls and the steps that follow them."""
    outage = {"on": True}

    def reply(request):
        if outage["on"] and is_reason(request) and odd(request):
            return FakeReply(status=500, message="overloaded")
        return healthy(request)

    with FakeLLMServer(reply) as server:
        cfg = config(root, tmp_path, *openai(server), "extract.max_failed_calls=8")
        first = extract.run(cfg)
        manifest = read_manifest(first)
        failed = manifest["counts"]["failed_calls"]
        assert 0 < failed < 8 and manifest["provisional"] is True
        assert manifest["extract"]["rules_origin"] == "extracted"
        outage["on"] = False
        sent = len(server.requests)
        again = extract.run(cfg)
        resent = [r for r in server.requests[sent:] if is_reason(r)]
        assert len(resent) == failed and all(odd(r) for r in resent)
    manifest = read_manifest(again)
    assert manifest["counts"]["failed_calls"] == 0 and "provisional" not in manifest


def test_an_answer_that_cannot_be_encoded_counts_as_one_failed_call(root, tmp_path):
    def reply(request):
        if is_reason(request) and odd(request):
            return FakeReply(text="The winner \ud800 was clearer.")  # a lone surrogate
        return healthy(request)

    with FakeLLMServer(reply) as server:
        cfg = config(root, tmp_path, *openai(server), "extract.max_failed_calls=8")
        path = extract.run(cfg)
    counts = read_manifest(path)["counts"]
    bad = sum(1 for r in server.requests if is_reason(r) and odd(r))
    assert 0 < bad // 2 < 8 and counts["failed_calls"] == bad // 2  # retried once each
    calls = [json.loads(line) for line in (path / "calls.jsonl").read_text().splitlines()]
    assert sum("not valid Unicode" in (c["error"] or "") for c in calls) == bad // 2


# --------------------------------------------------------------------------------------------
# Secrets a server echoes back


def echo_authorization(request) -> FakeReply:
    """A gateway that quotes the request's credentials in its error message, for half the
    reason prompts, and answers the rest."""
    if is_reason(request) and odd(request):
        headers = request.headers
        quoted = f"{headers.get('authorization')} {headers.get('x-amz-security-token', '')}"
        return FakeReply(
            status=400, error_type="ValidationException", message=f"bad request from {quoted}"
        )
    return healthy(request)


@pytest.mark.parametrize("variable", ["OPENAI_API_KEY", "GATEWAY"])
def test_an_openai_key_echoed_by_the_server_is_masked_in_the_artifact(
    root, tmp_path, monkeypatch, variable
):
    monkeypatch.setenv(variable, OPENAI_KEY)  # GATEWAY: a name that says nothing about secrets
    with FakeLLMServer(echo_authorization) as server:
        cfg = config(
            root,
            tmp_path,
            *openai(server),
            f"extract.llm.api_key_env={variable}",
            "extract.max_failed_calls=8",
        )
        path = extract.run(cfg)
    assert any(r.headers.get("authorization") == f"Bearer {OPENAI_KEY}" for r in server.requests)
    written = files_under(path, tmp_path / "llm")
    assert {p.name for p in written} >= {"calls.jsonl", "examples.jsonl", "manifest.json"}
    for file, text in written.items():
        assert OPENAI_KEY not in text, f"the key leaked into {file}"
    assert f"Bearer {MASK}" in written[path / "calls.jsonl"]
    assert f"Bearer {MASK}" in written[path / "examples.jsonl"]


def test_aws_credentials_echoed_by_the_server_stay_out_of_the_work_folder(root, tmp_path):
    with FakeLLMServer(echo_authorization) as server:
        cfg = config(root, tmp_path, *bedrock(server))
        with pytest.raises(RuntimeError, match="LLM calls failed") as err:
            extract.run(cfg)
    assert any(SESSION_TOKEN == r.headers.get("x-amz-security-token") for r in server.requests)
    work = work_path(artifact_path(cfg, "extract"))
    written = files_under(work, tmp_path / "llm")
    assert work / "calls.jsonl" in written and work / "examples.jsonl" in written
    for text in [str(err.value), *written.values()]:
        for secret in (ACCESS_KEY, SESSION_TOKEN, SECRET_KEY):
            assert secret not in text
    assert f"Credential={MASK}" in written[work / "calls.jsonl"]


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "autorule", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_a_bedrock_api_key_is_masked_on_stderr_and_in_the_call_log(root, tmp_path):
    """AWS_BEARER_TOKEN_BEDROCK (a Bedrock API key) sent over HTTPS, echoed back by the server,
    from the command line: neither stderr nor anything written shows it."""
    tls = self_signed_cert(tmp_path)
    if tls is None:
        pytest.skip("needs the openssl command to make a certificate for the HTTPS server")
    env = {
        **os.environ,
        "AWS_BEARER_TOKEN_BEDROCK": BEDROCK_API_KEY,
        "AWS_CA_BUNDLE": tls[0],  # trust the test server's certificate
    }
    with FakeLLMServer(echo_authorization, tls=tls) as server:
        res = cli(
            "stage=extract",
            f"paths.root={root}",
            f"extract.seed={zlib.crc32(tmp_path.name.encode())}",  # as config() draws them
            f"extract.llm.cache_dir={tmp_path}/llm",
            *bedrock(server),
            "extract.llm.progress=false",
            "extract.llm.retry.max_attempts=1",
            env=env,
        )
    assert res.returncode == 1 and "LLM calls failed" in res.stderr, res.stderr[-3000:]
    assert any(
        r.headers.get("authorization") == f"Bearer {BEDROCK_API_KEY}" for r in server.requests
    )
    assert f"Bearer {MASK}" in res.stderr
    work = work_path(artifact_path(config(root, tmp_path, *bedrock(server)), "extract"))
    written = files_under(work, tmp_path / "llm", root / "logs")
    assert work / "calls.jsonl" in written
    for text in [res.stdout, res.stderr, *written.values()]:
        assert BEDROCK_API_KEY not in text


def test_a_token_in_the_endpoint_url_stays_out_of_the_manifest_and_saved_config(root, tmp_path):
    token = "5f2b8c0d9e1a4b7c8d6e3f201a9b8c7d"
    with FakeLLMServer(healthy) as server:
        url = f"'{server.url}/v1?token={token}'"  # quoted: Hydra's grammar reserves "="
        # From the command line the override is refused before Hydra could echo it...
        res = cli(
            "stage=extract", f"paths.root={root}", f"extract.llm.base_url={url}", env=os.environ
        )
        assert res.returncode == 2 and "no secrets on the command line" in res.stderr
        assert token not in res.stderr
        # ...and from a config (composed here as a config file or ${oc.env:...} would give it)
        # the run goes ahead. The openai SDK appends the route after the query, so every call
        # fails with a 404 that quotes the URL; the allowance lets the fallback commit.
        cfg = config(root, tmp_path, *openai(server, url), "extract.max_failed_calls=100")
        path = extract.run(cfg)
    manifest = read_manifest(path)
    assert f"token={MASK}" in manifest["command"]
    # The endpoint is transport: not in the hashed config, only in the saved one.
    assert "base_url" not in manifest["config"]["extract"]["llm"]
    written = files_under(path, tmp_path / "llm")
    assert f"token={MASK}" in written[path / "config.yaml"]
    assert f"token={MASK}" in written[path / "calls.jsonl"]  # the 404's message
    for file, text in written.items():
        assert token not in text, f"the token leaked into {file}"


# --------------------------------------------------------------------------------------------
# Numbers refused before any call


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("extract.max_failed_calls=-1", "extract.max_failed_calls", "an integer >= 0"),
        ("extract.merge_chunk_size=0", "extract.merge_chunk_size", "an integer >= 2"),
        ("extract.num_examples=-3", "extract.num_examples", "an integer >= 1"),
        ("extract.num_examples=0", "extract.num_examples", "an integer >= 1"),
        ("extract.llm.retry.max_attempts=0", "extract.llm.retry.max_attempts", "an integer >= 1"),
    ],
)
def test_bad_numbers_are_refused_before_any_call(root, tmp_path, override, key, allowed):
    with FakeLLMServer(healthy) as server:
        cfg = config(root, tmp_path, *bedrock(server), override)
        with pytest.raises(ConfigError) as err:
            run_stage(cfg)
    assert str(err.value).startswith(f"{override.split('=')[0]}=")
    assert key in str(err.value) and allowed in str(err.value)
    assert server.requests == []  # nothing paid for
    assert not artifact_path(cfg, "extract").exists()
    assert not work_path(artifact_path(cfg, "extract")).exists()
