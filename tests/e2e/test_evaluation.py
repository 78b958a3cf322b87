"""generate -> evaluate -> report on the tiny profile, with an OpenAI-compatible test server as the
pairwise judge (the real openai client), a stand-in grpo artifact (tests/standin_grpo.py) and a
stand-in rule judge with the RuleJudge API."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from matplotlib import image

import standin_grpo
from autorule.core.artifacts import artifact_path, read_manifest
from autorule.core.config import compose
from autorule.evaluation.scoring import rm_scores
from autorule.stages import evaluate, generate, report
from fakeserver import FakeLLMServer, FakeReply

pytestmark = pytest.mark.slow

UNREADABLE = "I would rather not pick one."


def judge_longer(request):
    """Prefers the longer response; answers the first prompt unreadably."""
    text = request.prompt
    a = text.split("[Response A]\n", 1)[1].split("\n\n[Response B]", 1)[0]
    b = text.split("[Response B]\n", 1)[1].split("\n\nDecide which", 1)[0]
    if "What are good tips for reducing stress?" in text:
        return FakeReply(text=UNREADABLE)
    return FakeReply(
        text=f"A is {len(a)} long, B {len(b)}.\nPreferred: {'A' if len(a) >= len(b) else 'B'}"
    )


class RuleJudgeStandIn:
    """RuleJudge's API: rule 0 holds for answers with a digit, rule 1 for answers over 60
    characters (the bundled chosen answers have numbered steps and are longer)."""

    def __init__(self):
        self.asked = 0

    def judge(self, prompts, responses, rules):
        self.asked += len(responses) * len(rules)
        decisions = np.array(
            [[any(c.isdigit() for c in r), len(r) > 60][: len(rules)] for r in responses]
        )
        return SimpleNamespace(decisions=decisions, probs=decisions * 1.0, unparsed=0)


@pytest.fixture(scope="module")
def judged(trained, tmp_path_factory):
    root = trained["sft"].parents[1]
    work = tmp_path_factory.mktemp("evaluation")
    rules = work / "rules.json"
    rules.write_text(json.dumps(standin_grpo.RULES))
    with FakeLLMServer(reply=judge_longer) as server:
        overrides = [
            f"paths.root={root}",
            "+stage_modules.grpo=standin_grpo",
            "generate.model=grpo",
            "generate.reference=sft",
            "generate.checkpoints=true",
            "generate.max_prompts=5",
            "generate.max_new_tokens=12",
            f"rules.path={rules}",
            "evaluate.rule_agreement=true",
            "evaluate.agreement_pairs=6",
        ]
        cfg = compose(
            [
                "stage=pipeline",
                *overrides,
                "llm@evaluate.judge=openai",
                f"evaluate.judge.base_url={server.url}/v1",
                "evaluate.judge.model=fake-judge",
                f"evaluate.judge.cache_dir={work}/llm",
                "evaluate.judge.progress=false",
                "evaluate.prune_below=0.5",
            ]
        )
        rule_judge = RuleJudgeStandIn()
        patch = pytest.MonkeyPatch()
        patch.setattr(evaluate, "build_rule_judge", lambda cfg: rule_judge)
        try:
            standin_grpo.run(cfg)
            paths = {"generate": generate.run(cfg), "evaluate": evaluate.run(cfg)}
            paths["report"] = report.run(cfg)
        finally:
            patch.undo()
        requests = list(server.requests)
    return {
        "cfg": cfg,
        "overrides": overrides,
        "work": work,
        "paths": paths,
        "requests": requests,
        "rule_judge": rule_judge,
    }


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generate_samples_model_reference_and_checkpoints(judged):
    folder = judged["paths"]["generate"]
    model, reference = rows(folder / "responses.jsonl"), rows(folder / "reference.jsonl")
    assert len(model) == len(reference) == 5
    assert [r["id"] for r in model] == [r["id"] for r in reference]
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == [
        "step-2.jsonl",
        "step-4.jsonl",
    ]
    assert all(len(r["responses"]) == 1 and r["output_tokens"][0] <= 12 for r in model)
    info = json.loads((folder / "sampling.json").read_text())
    assert info["sampling"]["temperature"] == 0.9 and info["sampling"]["max_new_tokens"] == 12
    assert info["backend"] == "hf" and info["prompts"]["split"] == "test_subset"
    manifest = read_manifest(folder)
    assert {"preprocess", "sft", "grpo"} <= set(manifest["inputs"])


def test_win_rate_from_the_test_server(judged):
    metrics = json.loads((judged["paths"]["evaluate"] / "metrics.json").read_text())
    folder = judged["paths"]["generate"]
    model, reference = rows(folder / "responses.jsonl"), rows(folder / "reference.jsonl")
    # The server prefers the longer response (A on equal length, so equal lengths tie).
    pairs = [(m["responses"][0], r["responses"][0]) for m, r in zip(model, reference, strict=True)]
    expected = [1.0 if len(m) > len(r) else 0.0 if len(m) < len(r) else 0.5 for m, r in pairs]
    expected = expected[1:]  # the first prompt's answers are unreadable
    rate = metrics["win_rate"]
    assert rate["pairs"] == 5 and rate["scored"] == 4
    assert rate["unparsed_answers"] == 2 and rate["unparsed_pairs"] == 1
    assert rate["rate"] == pytest.approx(sum(expected) / 4)
    assert rate["low"] <= rate["rate"] <= rate["high"]
    # Both orders for the model and each checkpoint, all through the openai client (identical
    # requests, e.g. two identical answers in both orders, are sent once).
    assert 2 * 5 * 2 < len(judged["requests"]) <= 2 * 5 * 3
    assert set(metrics["win_rate_checkpoints"]) == {"step-2", "step-4"}
    judgments = rows(judged["paths"]["evaluate"] / "judgments.jsonl")
    assert judgments[0]["answer_model_as_a"] == UNREADABLE and judgments[0]["score"] is None


def rank_longer(request):
    """The leaderboard judge: ranks the longer output first, as a list; answers the first
    prompt with a malformed list."""
    text = request.prompt
    a = text.split("[Output of assistant A]\n", 1)[1].split("\n\n[Output of assistant B]", 1)[0]
    b = text.split("[Output of assistant B]\n", 1)[1].split("\n\nReply with", 1)[0]
    if "What are good tips for reducing stress?" in text:
        return FakeReply(text='[{"model": "A", "rank": 1}, {"model": "A", "rank": 2}]')
    first, second = ("A", "B") if len(a) >= len(b) else ("B", "A")
    return FakeReply(
        text=f"[{{'model': '{first}', 'rank': 1}}, {{'model': '{second}', 'rank': 2}}]"
    )


def test_leaderboard_protocol_ranks_both_orders(judged):
    with FakeLLMServer(reply=rank_longer) as server:
        cfg = compose(
            [
                "stage=evaluate",
                *judged["overrides"],
                "evaluate.protocol=leaderboard",
                "evaluate.rm_score=false",
                "evaluate.rule_agreement=false",
                "llm@evaluate.judge=openai",
                f"evaluate.judge.base_url={server.url}/v1",
                "evaluate.judge.model=fake-judge",
                "evaluate.judge.progress=false",
            ]
        )
        folder = evaluate.run(cfg)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["win_rate_protocol"] == "leaderboard"
    baseline = json.loads((judged["paths"]["evaluate"] / "metrics.json").read_text())
    rate, same = metrics["win_rate"], baseline["win_rate"]  # both judges prefer the longer one
    assert rate["unparsed_answers"] == 2 and rate["unparsed_pairs"] == 1 and rate["scored"] == 4
    assert rate["rate"] == pytest.approx(same["rate"]) and rate["ties"] == same["ties"]


def test_rule_agreement_and_pruned_rules(judged):
    folder = judged["paths"]["evaluate"]
    found = json.loads((folder / "rule_agreement.json").read_text())
    assert judged["rule_judge"].asked == 2 * 6 * 2
    assert found["overall"]["pairs"] == 6 and len(found["rules"]) == 2
    pruned = json.loads((folder / "pruned_rules.json").read_text())["rules"]
    kept = [r["rule"] for r in found["rules"] if (r["agreement"] or 0) >= 0.5]
    assert pruned == kept and pruned


def verdict_by_steps(request):
    """The rule judge's answer: satisfied when the response has numbered steps."""
    response = request.prompt.split("Assistant:", 1)[1].split("</conversation>", 1)[0]
    return FakeReply(text=f"Checked.\n{'[[Yes]]' if '1.' in response else '[[No]]'}")


def test_rule_agreement_through_the_rule_judge(judged):
    """The same stage with the real RuleJudge (generate mode) on the test server."""
    with FakeLLMServer(reply=verdict_by_steps) as server:
        cfg = compose(
            [
                "stage=evaluate",
                *judged["overrides"],
                "evaluate.win_rate=false",
                "evaluate.rm_score=false",
                "llm@judge.llm=openai",
                "judge.mode=generate",
                f"judge.llm.base_url={server.url}/v1",
                "judge.llm.model=fake-rule-judge",
                f"judge.llm.cache_dir={judged['work']}/rule-judge",
                "judge.llm.progress=false",
            ]
        )
        folder = evaluate.run(cfg)
        asked = len(server.requests)
    found = json.loads((folder / "rule_agreement.json").read_text())
    assert asked == 2 * 6 * 2
    # Every rule gets the same verdicts here: satisfied exactly when the answer has steps.
    pairs = pd.read_parquet(artifact_path(cfg, "preprocess") / "test_prefs.parquet").head(6)
    chosen = pairs["chosen_content"].str.contains("1.", regex=False)
    rejected = pairs["rejected_content"].str.contains("1.", regex=False)
    for row in found["rules"]:
        assert row["agree"] == int((chosen & ~rejected).sum())
        assert row["disagree"] == int((~chosen & rejected).sum())
        assert row["both"] == int((chosen & rejected).sum())
    assert found["unparsed"] == 0 and found["failed"] == 0


def test_reward_hacking_is_flagged_from_the_training_log(judged):
    found = json.loads((judged["paths"]["evaluate"] / "hacking.json").read_text())
    flagged = {f["reward"] for f in found["flags"] if f["source"] == "training log"}
    assert "rewards/rm/mean" in flagged
    steps = [p["step"] for p in found["checkpoints"]]
    assert steps == [2.0, 4.0, float(standin_grpo.STEPS)]
    assert all(p["rm_mean"] is not None for p in found["checkpoints"])


def test_report_renders_with_real_plots(judged):
    folder = judged["paths"]["report"]
    text = (folder / "report.md").read_text()
    expected = [
        "win_rates",
        "lengths",
        "rule_agreement",
        "rewards",
        "rule_satisfaction",
        "rm_vs_win_rate",
    ]
    for name in expected:
        png = folder / "plots" / f"{name}.png"
        assert f"(plots/{name}.png)" in text
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = image.imread(png)[..., :3]
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300
        ink = (pixels.min(axis=-1) < 0.9).mean()  # share of pixels that are not near white
        colours = len(np.unique((pixels * 255).astype(int).reshape(-1, 3), axis=0))
        assert ink > 0.02 and colours > 20, (name, ink, colours)
    assert "**Flagged**" in text and "rewards/rm/mean rose" in text
    assert "| model |" in text and "95% CI" in text


def test_rm_scores_match_the_rm_stage(trained):
    """The evaluate stage reads reward-model scores exactly as the rm stage's own evaluation."""
    metrics = json.loads((trained["rm"] / "metrics.json").read_text())
    pairs = pd.read_parquet(trained["preprocess"] / "test_prefs.parquet")
    prompts = pairs["formatted_prompt"].tolist()
    scores = rm_scores(
        trained["rm"] / "model",
        prompts + prompts,
        pairs["chosen_content"].tolist() + pairs["rejected_content"].tolist(),
        batch_size=64,
        max_length=512,
    )
    assert len(scores) == 2 * metrics["scored_pairs"]
    assert np.mean(scores) == pytest.approx(metrics["reward_mean"], abs=1e-4)
    assert np.std(scores) == pytest.approx(metrics["reward_std"], abs=1e-4)


def test_best_of_n_keeps_the_highest_scoring_sample(trained, monkeypatch):
    """Against the reward registry's API (a stand-in term scoring answers by length, registered
    for this test)."""
    from autorule.rewards.registry import READS, REWARDS, TermReads

    calls = []

    def length_term(context):
        def length(prompts, completions, **kwargs):
            calls.append((list(prompts), list(completions)))
            return [float(len(c)) for c in completions]

        return length

    monkeypatch.setitem(REWARDS, "length", length_term)
    monkeypatch.setitem(READS, "length", TermReads())
    cfg = compose(
        [
            "stage=generate",
            f"paths.root={trained['sft'].parents[1]}",
            "generate.model=sft",
            "generate.reference=null",
            "generate.max_prompts=3",
            "generate.max_new_tokens=10",
            "generate.best_of_n=4",
            "generate.best_of_reward=length",
        ]
    )
    folder = generate.run(cfg)
    candidates = rows(folder / "candidates.jsonl")
    responses = rows(folder / "responses.jsonl")
    assert len(calls) == 1 and len(calls[0][1]) == 12
    assert calls[0][0][0] == "<|user|>What are good tips for reducing stress?<|assistant|>"
    for row, response in zip(candidates, responses, strict=True):
        assert len(row["candidates"]) == 4 and row["scores"] == [len(c) for c in row["candidates"]]
        assert row["chosen"] == int(np.argmax(row["scores"]))
        assert response["responses"] == [row["candidates"][row["chosen"]]]
    assert json.loads((folder / "sampling.json").read_text())["best_of_reward"] == "length"


def test_mt_bench_questions_are_answered_turn_by_turn_in_fastchat_format(trained, tmp_path):
    questions = tmp_path / "question.jsonl"
    questions.write_text(
        "".join(
            json.dumps({"question_id": 81 + i, "category": "writing", "turns": [f"q{i}", "more?"]})
            + "\n"
            for i in range(2)
        )
    )
    overrides = [
        f"paths.root={trained['sft'].parents[1]}",
        "generate.model=sft",
        "generate.reference=null",
        f"generate.prompts={questions}",
        "generate.max_new_tokens=8",
        "evaluate.rm_score=false",
        "evaluate.rule_agreement=false",
    ]
    cfg = compose(["stage=evaluate", *overrides])
    generated = generate.run(cfg)
    answers = rows(generated / "responses.jsonl")
    assert [len(r["responses"]) for r in answers] == [2, 2]
    assert read_manifest(generated)["inputs"].keys() == {"sft"}  # no preprocess split read
    folder = evaluate.run(cfg)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["win_rate"] is None and metrics["mt_bench"]["status"] == "written"
    [record, _] = rows(folder / "mt_bench" / "model_answer" / "autorule-sft.jsonl")
    assert record["question_id"] == 81 and record["model_id"] == "autorule-sft"
    assert record["choices"][0]["turns"] == answers[0]["responses"]
