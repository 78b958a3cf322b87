"""The extract stage end to end on the tiny profile: the tiny hf model, and Bedrock via a fake.

Preprocess runs once per module (uf and mt); each test composes its own extract config and keeps
its LLM response cache in its own folder, so no test sees another's cached answers.
"""

import hashlib
import json
import logging
import threading

import pandas as pd
import pytest

from autorule.core.artifacts import artifact_path, read_manifest
from autorule.core.config import compose
from autorule.rules.prompts import approx_tokens, fill
from autorule.rules.ruleset import read_rules_file
from autorule.stages import extract, preprocess
from fakeserver import FakeLLMServer, FakeReply

pytestmark = pytest.mark.slow

SECRET_KEY = "fake-secret-key-for-e2e-tests-0123456789"
POOL = [
    "The reply answers the question.",
    "The reply is concise.",
    "The reply gives an example.",
    "The reply is polite.",
    "The reply uses steps.",
    "The reply states its assumptions.",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("root")
    for dataset in ("uf", "mt"):
        preprocess.run(compose(["stage=preprocess", f"dataset={dataset}", f"paths.root={folder}"]))
    return folder


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE5678")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def config(root, tmp_path, *overrides):
    return compose(
        [
            "stage=extract",
            f"paths.root={root}",
            f"extract.llm.cache_dir={tmp_path}/llm",
            "extract.llm.progress=false",
            *overrides,
        ]
    )


def bedrock(server, *overrides):
    return [
        "llm@extract.llm=bedrock",
        f"extract.llm.endpoint_url={server.url}",
        "extract.llm.retry.initial_wait=0.01",
        "extract.llm.retry.max_wait=0.02",
        "extract.llm.retry.jitter=0",
        "extract.llm.retry.max_attempts=2",
        *overrides,
    ]


# The released code's settings that the paper profile pins, on the tiny data (docs/fidelity.md).
PAPER = (
    "prompts@extract.prompts=paper",
    "extract.pool=unfiltered",
    "extract.merge_chunk_size=null",
)


class Reasoner:
    """Answers the three prompts of either set of conf/prompts/ like a well-behaved model."""

    def __init__(self):
        self.fail = False  # answer every request with a non-retryable error
        self.answered: list[str] = []  # prompts answered successfully, in order
        self.lock = threading.Lock()

    def __call__(self, request):
        prompt = request.prompt
        if self.fail:
            return FakeReply(status=400, error_type="ValidationException", message="down")
        h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
        if "===== Conversation A =====" in prompt or "[Conversation A]" in prompt:
            reply = FakeReply(text="The winner was clearer.", reasoning=f"Reasoning {h % 97}.")
        elif "----- analysis -----" in prompt or "[Analysis]" in prompt:
            rules = [POOL[h % 6], POOL[(h + 1) % 6], "  " + POOL[h % 6].upper()]
            reply = FakeReply(text=f"Here you go:\n```json\n{json.dumps(rules)}\n```")
        elif "Combine every group" in prompt or "[Rules]" in prompt:
            listed = [line[2:] for line in prompt.splitlines() if line.startswith("- ")]
            reply = FakeReply(text=json.dumps(listed[: max(1, len(listed) // 2)]))
        else:
            reply = FakeReply(status=400, error_type="ValidationException", message="unknown")
        with self.lock:
            self.answered.append(prompt)
        return reply


def test_tiny_model_extraction_falls_back_to_the_example_rules(root, tmp_path, caplog, rules_of):
    cfg = config(root, tmp_path)
    with caplog.at_level(logging.WARNING):
        path = extract.run(cfg)
    assert {p.name for p in path.iterdir()} >= {
        "rules.json",
        "examples.jsonl",
        "calls.jsonl",
        "rules_unmerged.json",
        "manifest.json",
    }
    manifest = read_manifest(path)
    counts = manifest["counts"]
    assert counts["pairs"] == 8 and counts["calls"] >= 8 and counts["failed_calls"] == 0
    # Random weights: no usable rules, so the fallback is used, recorded and announced.
    assert counts["fallback_rules_used"] == 1 and counts["rules_after_merge"] == 0
    assert manifest["extract"]["rules_origin"] == "fallback"
    assert "FALLBACK RULE FILE" in caplog.text
    rules = json.loads((path / "rules.json").read_text())
    caplog.clear()
    assert rules == read_rules_file(cfg.extract.fallback_rules) == rules_of(cfg)
    # Later stages reading this artifact are told too (load_rules warns on each read).
    assert "holds the FALLBACK rule file" in caplog.text and "NOT rules extracted" in caplog.text
    examples = [json.loads(line) for line in (path / "examples.jsonl").read_text().splitlines()]
    assert len(examples) == 8 and all(e["parse_error"] or e["rules"] for e in examples)
    # Fallback rules are provisional: a re-run recomputes them (from the cache here, since the
    # tiny model's answers were usable) into the same content.
    assert manifest["provisional"] is True
    assert extract.run(cfg) == path
    again = read_manifest(path)
    assert again["artifact_hash"] == manifest["artifact_hash"]
    assert again["counts"]["cached_calls"] == again["counts"]["calls"]


def test_bedrock_extraction_merges_in_chunks(root, tmp_path):
    with FakeLLMServer(Reasoner()) as server:
        cfg = config(root, tmp_path, *bedrock(server, "extract.merge_chunk_size=2"))
        path = extract.run(cfg)
    counts = read_manifest(path)["counts"]
    assert counts["pairs"] == 8 and counts["fallback_rules_used"] == 0
    assert counts["rules_before_merge"] == 24  # three per pair, one an exact duplicate
    assert counts["rules_after_dedupe"] <= 6 and counts["merge_rounds"] >= 2
    rules = json.loads((path / "rules.json").read_text())
    assert rules and len(rules) == counts["rules_after_merge"] < counts["rules_after_dedupe"]
    assert counts["calls"] == 16 + counts["merge_calls"] == len(server.requests)
    examples = [json.loads(line) for line in (path / "examples.jsonl").read_text().splitlines()]
    assert {e["winner"] for e in examples} == {"A", "B"}  # sides are randomised
    assert all(e["rules_from_used"] == "reasoning" and e["reasoning"] for e in examples)


def test_interrupted_extraction_resumes_without_repeating_calls(root, tmp_path, caplog):
    reasoner = Reasoner()

    def flaky(request):  # the service goes down for good after five answers
        reasoner.fail = reasoner.fail or request.number > 5
        return reasoner(request)

    caplog.set_level(logging.INFO)
    with FakeLLMServer(flaky) as server:
        cfg = config(root, tmp_path, *bedrock(server, "extract.seed=1"))
        with pytest.raises(RuntimeError, match="re-run the same command"):
            extract.run(cfg)
        assert len(reasoner.answered) == 5
        reasoner.fail, server.reply = False, reasoner  # the service is back
        path = extract.run(cfg)
    assert len(reasoner.answered) == len(set(reasoner.answered))  # no finished call repeated
    counts = read_manifest(path)["counts"]
    assert counts["cached_calls"] == 5 and counts["failed_calls"] == 0
    # Fake AWS credentials never reach the artifact or the logs.
    for text in [caplog.text, *(p.read_text() for p in path.iterdir())]:
        assert SECRET_KEY not in text


def test_mt_extraction_takes_judgments_per_question(root, tmp_path):
    with FakeLLMServer(Reasoner()) as server:
        cfg = config(
            root,
            tmp_path,
            "dataset=mt",
            "extract.examples_per_question=2",
            "extract.chosen_first=true",
            *bedrock(server),
        )
        path = extract.run(cfg)
    examples = [json.loads(line) for line in (path / "examples.jsonl").read_text().splitlines()]
    assert len(examples) == 8 and len({e["question_id"] for e in examples}) == 4
    assert {e["winner"] for e in examples} == {"A"}  # chosen_first: the released behaviour


def test_no_rules_and_no_fallback_is_an_error(root, tmp_path):
    with FakeLLMServer(lambda r: FakeReply(text="I would rather not say.")) as server:
        cfg = config(root, tmp_path, *bedrock(server, "extract.fallback_rules=null"))
        with pytest.raises(RuntimeError, match="extraction produced no rules.*8 unparseable"):
            extract.run(cfg)


def test_cut_off_answers_keep_whole_rules_and_cut_merges_change_nothing(root, tmp_path):
    def cut_off(request):  # every answer hits the token budget in the middle of a rule
        prompt = request.prompt
        if "===== Conversation A =====" in prompt:
            return FakeReply(text="The winner was clearer.", reasoning="It was clearer.")
        h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
        if "----- analysis -----" in prompt:
            return FakeReply(text=f'```json\n["{POOL[h % 6]}", "{POOL[(h + 1) % 6]}", "The rep')
        return FakeReply(text='["The reply is concise and polite.", "The reply ans')  # merge

    with FakeLLMServer(cut_off) as server:
        path = extract.run(config(root, tmp_path, *bedrock(server)))
    counts = read_manifest(path)["counts"]
    assert counts["truncated_rule_lists"] == 8 and counts["parse_failures"] == 1
    assert counts["rules_before_merge"] == 16 and counts["merge_parse_failures"] == 1
    examples = [json.loads(line) for line in (path / "examples.jsonl").read_text().splitlines()]
    assert all(e["parse_truncated"] and len(e["rules"]) == 2 for e in examples)
    assert all("cut off" in e["parse_warnings"][0] for e in examples)
    # The cut merge answer lost rules: it is not taken, the rules stay unmerged.
    rules = json.loads((path / "rules.json").read_text())
    assert rules == json.loads((path / "rules_unmerged.json").read_text())
    assert "The reply is concise and polite." not in rules


def test_paper_settings_name_the_winner_and_merge_in_one_call(root, tmp_path):
    reasoner = Reasoner()
    with FakeLLMServer(reasoner) as server:
        cfg = config(root, tmp_path, *PAPER, *bedrock(server))
        path = extract.run(cfg)
    counts = read_manifest(path)["counts"]
    examples = [json.loads(line) for line in (path / "examples.jsonl").read_text().splitlines()]
    # Each extractor prompt names the winner of its own pair (the reasoning is unique per pair).
    for example in examples:
        [prompt] = [p for p in reasoner.answered if example["reasoning"] in p]
        assert f"preferred Conversation {example['winner']} to the other one" in prompt
    # The deduplicated list fits: one merge call over all of it, nothing split.
    assert counts["merge_calls"] == counts["merge_rounds"] == 1
    assert counts["merge_split_rounds"] == 0
    [merge] = [p for p in reasoner.answered if "[Rules]" in p]
    unmerged = json.loads((path / "rules_unmerged.json").read_text())
    assert len(unmerged) == counts["rules_after_dedupe"] > 1
    assert all(f"- {rule}" in merge for rule in unmerged)
    assert 0 < counts["merge_prompt_tokens_estimate"] < cfg.extract.merge_context_tokens


def test_a_merge_past_the_context_is_split_and_counted(root, tmp_path, caplog):
    cfg = config(root, tmp_path, *PAPER)
    room = approx_tokens(fill(cfg.extract.prompts.merger, rules="")) + cfg.extract.llm.max_tokens
    with FakeLLMServer(Reasoner()) as server:
        cfg = config(
            root, tmp_path, *PAPER, *bedrock(server, f"extract.merge_context_tokens={room + 30}")
        )
        with caplog.at_level(logging.WARNING):
            path = extract.run(cfg)
    counts = read_manifest(path)["counts"]
    assert counts["merge_split_rounds"] >= 1 and counts["merge_calls"] > 1
    assert "do not fit the merge model's context" in caplog.text


def test_unfiltered_pool_draws_from_the_whole_train_prefs(root, tmp_path):
    cfg = compose(["stage=extract", f"paths.root={root}", "extract.num_examples=100000"])
    folder = artifact_path(cfg, "preprocess")
    filtered = set(pd.read_parquet(folder / "train_prefs.parquet")["prompt_id"])
    whole = set(pd.read_parquet(folder / "train_prefs_unfiltered.parquet")["prompt_id"])
    assert filtered < whole  # the filter dropped some rows

    def drawn(pool):
        cfg.extract.pool = pool
        return {p.row_ids["prompt_id"] for p in extract.load_pairs(cfg, folder)}

    assert drawn("unfiltered") == whole and drawn("filtered") == filtered
    with pytest.raises(FileNotFoundError, match="preprocess.unfiltered_splits"):
        extract.load_pairs(cfg, tmp_path)  # an artifact without the whole split
