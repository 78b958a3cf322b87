"""The critiques stage through an OpenAI-compatible server (the real openai client against
tests/fakeserver.py): both answers of each pair critiqued, resumable through the cache."""

import json

import pandas as pd
import pytest

from autorule.core.artifacts import read_manifest
from autorule.core.config import compose
from autorule.stages import critiques
from fakeserver import FakeLLMServer, FakeReply, echoing_authorization, files_holding

pytestmark = pytest.mark.slow

KEY_ENV = "AUTORULE_TEST_JUDGE_KEY"
PAIRS = 4


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-judge-0123456789abcdef")


def config(root, server, cache, *overrides):
    return compose(
        [
            "stage=critiques",
            f"paths.root={root}",
            "llm@critique.llm=openai",
            f"critique.llm.base_url={server.url}/v1",
            "critique.llm.model=served-judge",
            f"critique.llm.api_key_env={KEY_ENV}",
            f"critique.llm.cache_dir={cache}",
            "critique.llm.progress=false",
            "critique.llm.retry.max_attempts=1",
            "critique.llm.temperature=0.0",
            "critique.llm.max_tokens=64",
            *overrides,
        ]
    )


def echo_answer(request) -> FakeReply:
    """A critique that quotes the answer it was shown, so the test can check the pairing."""
    answer = request.prompt.split("<answer>\n", 1)[1].split("\n</answer>", 1)[0]
    return FakeReply(text=f"  Critique of: {answer[:40]}  ")


def test_both_answers_are_critiqued_and_a_rerun_sends_nothing(root, tmp_path):
    with FakeLLMServer(echo_answer) as server:
        path = critiques.run(
            config(root, server, tmp_path / "cache", f"critique.num_pairs={PAIRS}")
        )
        sent = len(server.requests)
        table = pd.read_parquet(path / "critiques.parquet")
        assert list(table.columns) == [
            "prompt",
            "chosen",
            "rejected",
            "chosen_feedback",
            "rejected_feedback",
        ]
        assert len(table) == PAIRS and sent == 2 * PAIRS
        for row in table.itertuples():
            assert row.chosen_feedback == f"Critique of: {row.chosen[:40]}".strip()
            assert row.rejected_feedback == f"Critique of: {row.rejected[:40]}".strip()
        bodies = [r.body for r in server.requests]  # in arrival order: calls run concurrently
        assert {b["model"] for b in bodies} == {"served-judge"}
        assert {(b["temperature"], b["max_tokens"]) for b in bodies} == {(0.0, 64)}
        assert all(b["messages"][0]["role"] == "system" for b in bodies)
        assert "Do not give a numeric score" in bodies[0]["messages"][0]["content"]
        for prompt in table["prompt"]:  # each request shows the pair's prompt, twice per pair
            assert sum(prompt in b["messages"][1]["content"] for b in bodies) >= 2
        manifest = read_manifest(path)
        assert manifest["counts"]["pairs"] == PAIRS and manifest["counts"]["cached_calls"] == 0

        # Recomputing the artifact replays every answer from the cache: zero requests.
        again = critiques.run(
            config(root, server, tmp_path / "cache", f"critique.num_pairs={PAIRS}", "force=true")
        )
        assert len(server.requests) == sent
        assert read_manifest(again)["counts"]["cached_calls"] == 2 * PAIRS
        pd.testing.assert_frame_equal(pd.read_parquet(again / "critiques.parquet"), table)
        secret = "sk-test-judge-0123456789abcdef"
        assert (
            secret not in json.dumps(manifest) and secret not in (path / "config.yaml").read_text()
        )


def test_failed_calls_stop_the_stage_and_a_rerun_retries_only_them(root, tmp_path):
    failing = {"on": True}

    def reply(request):
        if failing["on"] and "<answer>\n" in request.prompt and request.number == 3:
            return FakeReply(status=400, message="bad request")
        return echo_answer(request)

    with FakeLLMServer(reply) as server:
        cfg = config(root, server, tmp_path / "cache", "critique.num_pairs=3")
        with pytest.raises(RuntimeError, match="1 of 6 critique calls failed"):
            critiques.run(cfg)
        failing["on"] = False
        before = len(server.requests)
        path = critiques.run(cfg)
        assert len(server.requests) == before + 1  # only the failed call is sent again
        assert read_manifest(path)["counts"]["cached_calls"] == 5


def test_a_key_the_judge_echoes_stays_out_of_the_artifact(root, tmp_path, monkeypatch):
    # A variable whose name says nothing, holding a key of no known shape: only the key the
    # openai backend registered can mask it.
    secret = "gateway-Zq81mXk2pL0vT"
    monkeypatch.setenv("GATEWAY", secret)
    with FakeLLMServer(echoing_authorization(echo_answer)) as server:
        cfg = config(
            root,
            server,
            tmp_path / "cache",
            "critique.num_pairs=2",
            "critique.llm.api_key_env=GATEWAY",
        )
        path = critiques.run(cfg)
        assert server.requests[0].headers["authorization"] == f"Bearer {secret}"
    table = pd.read_parquet(path / "critiques.parquet")
    assert table["chosen_feedback"].str.contains("request sent with Bearer").all()
    assert files_holding(path, secret) == []


def test_calls_allowed_to_fail_make_the_artifact_provisional(root, tmp_path):
    """Pairs dropped for failed calls (critique.max_failed_calls) are not a finished artifact: a
    later run (a strict one too) recomputes it, asking again only for the failed calls."""
    failing = {"on": True}

    def reply(request):
        if failing["on"] and request.number % 4 == 0:
            return FakeReply(status=500, message="overloaded")
        return echo_answer(request)

    with FakeLLMServer(reply) as server:
        cache = tmp_path / "cache"
        path = critiques.run(
            config(root, server, cache, "critique.num_pairs=5", "critique.max_failed_calls=100")
        )
        manifest = read_manifest(path)
        failed = manifest["counts"]["failed_calls"]
        assert failed == 2 and manifest["counts"]["dropped_pairs"] >= 1
        assert manifest["provisional"] is True
        failing["on"] = False
        before = len(server.requests)
        path = critiques.run(config(root, server, cache, "critique.num_pairs=5"))
        assert len(server.requests) == before + failed  # the rest replayed from the cache
    manifest = read_manifest(path)
    assert manifest["counts"]["pairs"] == 5 and "provisional" not in manifest
