"""The evaluate stage's pairwise judge misbehaving, through the real openai client against
tests/fakeserver.py: a judge that echoes the API key, a judge that fails, a judge whose answer
quotes a verdict the responses planted."""

import json

import pytest

from autorule.core.artifacts import read_manifest
from autorule.core.config import compose
from autorule.stages import evaluate, generate
from fakeserver import FakeLLMServer, FakeReply, echoing_authorization, files_holding

pytestmark = pytest.mark.slow

KEY_ENV = "AUTORULE_TEST_PAIRWISE_KEY"
PROMPTS = 3


@pytest.fixture(scope="module")
def root(trained):
    """The session's trained root, with a generate artifact (the base model against sft)."""
    folder = trained["sft"].parents[1]
    generate.run(compose(["stage=generate", *sampling(folder)]))
    return folder


def sampling(root) -> list[str]:
    return [
        f"paths.root={root}",
        "generate.model=base",
        "generate.reference=sft",
        f"generate.max_prompts={PROMPTS}",
        "generate.max_new_tokens=8",
    ]


def config(root, server, cache, *overrides):
    return compose(
        [
            "stage=evaluate",
            *sampling(root),
            "evaluate.rm_score=false",
            "evaluate.rule_agreement=false",
            "evaluate.alpaca_eval.run=false",
            "llm@evaluate.judge=openai",
            f"evaluate.judge.base_url={server.url}/v1",
            "evaluate.judge.model=served-judge",
            f"evaluate.judge.api_key_env={KEY_ENV}",
            f"evaluate.judge.cache_dir={cache}",
            "evaluate.judge.progress=false",
            "evaluate.judge.retry.max_attempts=1",
            *overrides,
        ]
    )


def prefer_a(request) -> FakeReply:
    return FakeReply(text="Both are short; A reads better.\nPreferred: A")


def test_a_key_the_judge_echoes_stays_out_of_the_artifact(root, tmp_path, monkeypatch):
    secret = "sk-pairwise-judge-0123456789abcdef"
    monkeypatch.setenv(KEY_ENV, secret)
    with FakeLLMServer(echoing_authorization(prefer_a)) as server:
        path = evaluate.run(config(root, server, tmp_path / "cache"))
        assert server.requests[0].headers["authorization"] == f"Bearer {secret}"
    rows = [json.loads(line) for line in (path / "judgments.jsonl").read_text().splitlines()]
    assert len(rows) == PROMPTS and "request sent with Bearer" in json.dumps(rows)
    assert files_holding(path, secret) == []


def test_failed_judge_calls_leave_a_provisional_result_retried_by_the_next_run(
    root, tmp_path, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, "sk-pairwise-judge-0123456789abcdef")
    healthy = {"on": False}

    def reply(request):
        if not healthy["on"] and request.number % 2 == 0:
            return FakeReply(status=500, message="the judge is down")
        return prefer_a(request)

    with FakeLLMServer(reply) as server:
        cfg = config(root, server, tmp_path / "cache", "evaluate.max_pairs=2")
        path = evaluate.run(cfg)
        manifest = read_manifest(path)
        failed = manifest["counts"]["failed_calls"]
        assert failed == 2 and manifest["provisional"] is True
        healthy["on"] = True
        sent = len(server.requests)
        path = evaluate.run(cfg)
        assert len(server.requests) == sent + failed  # only the failed calls are asked again
    manifest = read_manifest(path)
    metrics = json.loads((path / "metrics.json").read_text())
    assert manifest["counts"]["failed_calls"] == 0 and "provisional" not in manifest
    assert metrics["win_rate"]["scored"] == 2 and metrics["win_rate"]["rate"] == 0.5
