"""The feedback stage through an OpenAI-compatible server (the real openai client against
tests/fakeserver.py) whose scripted annotator disagrees with itself in a known way: its ratings
favour the dataset's chosen answer, its rankings the longer answer. The share of disagreement is
then known exactly from the data."""

import hashlib
import itertools
import json
import subprocess
import sys

import pandas as pd
import pytest

from autorule.core.artifacts import artifact_path, read_manifest
from autorule.core.config import compose
from autorule.data.pairs import preference_rows
from autorule.stages import feedback, feedback_eval
from fakeserver import FakeLLMServer, FakeReply

pytestmark = pytest.mark.slow

KEY_ENV = "AUTORULE_TEST_ANNOTATOR_KEY"
N = 12


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-annotator-0123456789abcdef")


def between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def digest_wins(a: str, b: str) -> str:
    """The rankings' rule: the answer with the smaller digest wins (unrelated to the ratings')."""
    return (
        "A"
        if hashlib.sha256(a.encode()).hexdigest() < hashlib.sha256(b.encode()).hexdigest()
        else "B"
    )


class Annotator:
    """Rates chosen answers 7 and the others 2 (one answer's rating unreadable); ranks by
    :func:`digest_wins` in both orders, except for one instruction where it always says A
    (position bias: a tie)."""

    def __init__(self, chosen: set[str], unreadable: str, biased: str):
        self.chosen, self.unreadable, self.biased = chosen, unreadable, biased

    def __call__(self, request) -> FakeReply:
        text = request.prompt
        if "[Response A]" in text:
            a = between(text, "[Response A]\n", "\n\n[Response B]")
            b = between(text, "[Response B]\n", "\n\nDecide")
            biased = between(text, "[Instruction]\n", "\n\n[Response A]") == self.biased
            winner = "A" if biased else digest_wins(a, b)
            return FakeReply(text=f"Weighing both.\nPreferred: {winner}")
        response = between(text, "[Response]\n", "\n\nJudge the response")
        if response == self.unreadable:
            return FakeReply(text="It is hard to say.")
        return FakeReply(text=f"Reasoning.\nRating: {7 if response in self.chosen else 2}")


def config(root, *overrides):
    return compose(
        [
            f"paths.root={root}",
            "llm@feedback.llm=openai",
            "feedback.llm.base_url=URL",  # a transport key: the artifacts do not depend on it
            "feedback.llm.model=served-annotator",
            f"feedback.llm.api_key_env={KEY_ENV}",
            f"feedback.llm.cache_dir={root / 'llm-cache'}",
            "feedback.llm.progress=false",
            "feedback.llm.retry.max_attempts=1",
            f"feedback.num_instructions={N}",
            "feedback.heldout_instructions=3",
            *overrides,
        ]
    )


def test_known_disagreement_share(root):
    cfg = config(root, "stage=feedback")
    rows = preference_rows(artifact_path(cfg, "preprocess") / "test_prefs.parquet", N)
    rows = rows[rows["chosen"] != rows["rejected"]].reset_index(drop=True)
    unreadable = str(rows["rejected"][0])
    biased = str(rows["prompt"][1])
    annotator = Annotator(set(rows["chosen"].astype(str)), unreadable, biased)
    with FakeLLMServer(annotator) as server:
        cfg.feedback.llm.base_url = f"{server.url}/v1"
        path = feedback.run(cfg)
        sent = len(server.requests)

    # every pair is (chosen, rejected): the ratings imply x except for the unreadable one; the
    # rankings say x or y by digest, equal for the biased instruction
    expected = {"x": 0, "y": 0, "equal": 1}
    for chosen, rejected in zip(rows["chosen"][2:], rows["rejected"][2:], strict=True):
        expected["x" if digest_wins(str(chosen), str(rejected)) == "A" else "y"] += 1
    scored = len(rows) - 1
    summary = json.loads((path / "consistency.json").read_text())
    assert sent == 2 * len(rows) + 2 * len(rows)  # a rating per answer, a ranking per order
    assert summary["table"]["x"] == expected
    assert summary["table"]["y"] == {"x": 0, "y": 0, "equal": 0}
    assert summary["pairs"] == scored and summary["missing"] == 1
    assert summary["unparsed_ratings"] == 1 and summary["unparsed_rankings"] == 0
    assert summary["disagreement"] == pytest.approx((scored - expected["x"]) / scored)
    assert 0 < summary["disagreement"] < 1  # the data has both kinds, so the test can fail

    ratings = pd.read_parquet(path / "ratings.parquet")
    rankings = pd.read_parquet(path / "rankings.parquet")
    assert len(ratings) == 2 * len(rows) and len(rankings) == len(rows)
    assert (rankings["split"] == "heldout").sum() == 3
    assert read_manifest(path)["counts"]["consistency_pairs"] == scored
    assert "Disagreement" in (path / "consistency.md").read_text()


@pytest.mark.parametrize("protocol", ["ratings", "rankings"])
def test_reward_models_train_and_pick_the_best_of_4(root, protocol):
    from autorule.stages import feedback_rm, generate

    assert read_manifest(artifact_path(config(root, "stage=feedback"), "feedback"))  # made above
    path = feedback_rm.run(config(root, "stage=feedback_rm", f"feedback_rm.protocol={protocol}"))
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["protocol"] == protocol and metrics["global_step"] == 6
    # rankings: 9 training pairs minus the tie; ratings: 18 training answers minus the unread one
    assert metrics["train_rows"] == {"ratings": 17, "rankings": 8}[protocol]
    for kind in ("rankings", "ratings"):
        assert 0.0 <= metrics[f"heldout_{kind}_accuracy"] <= 1.0
    assert metrics["heldout_ratings_pairs"] == 3  # the 3 held-out pairs all differ in rating

    cfg = config(
        root,
        "stage=generate",
        "generate.model=base",
        "generate.reference=null",
        "generate.best_of_n=4",
        "generate.best_of_reward=feedback_rm",
        "generate.max_prompts=3",
        "generate.max_new_tokens=8",
        f"feedback_rm.protocol={protocol}",
    )
    out = generate.run(cfg)
    assert "feedback_rm" in read_manifest(out)["inputs"]  # a protocol's picks are its own artifact
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert len(row["candidates"]) == len(row["scores"]) == 4
        assert row["scores"][row["chosen"]] == max(row["scores"])


def eval_rating(response: str) -> int:
    """The evaluation annotator's ratings: a function of the answer's length, so picks and
    references differ in rating in a way the test can recompute."""
    return 1 + len(response) % 7


class EvalAnnotator(Annotator):
    def __call__(self, request) -> FakeReply:
        if "[Response A]" in request.prompt:
            return super().__call__(request)
        response = between(request.prompt, "[Response]\n", "\n\nJudge the response")
        return FakeReply(text=f"Reasoning.\nRating: {eval_rating(response)}")


def expected_score(judged_by: str, pick: str, reference: str) -> float:
    if judged_by == "ratings":
        a, b = eval_rating(pick), eval_rating(reference)
        return 1.0 if a > b else 0.5 if a == b else 0.0
    # both orders: X as A wins if its digest is smaller; X as B wins if the reference's is larger
    return ((digest_wins(pick, reference) == "A") + (digest_wins(reference, pick) == "B")) / 2


def test_feedback_eval_two_by_two(root):
    from PIL import Image

    overrides = [
        "stage=feedback_eval",
        "generate.model=base",
        "generate.reference=null",
        "generate.best_of_n=4",
        "generate.best_of_reward=feedback_rm",
        "generate.max_prompts=3",
        "generate.max_new_tokens=8",
        "feedback_eval.n_values=[1,2,4]",
    ]
    cfg = config(root, *overrides)
    assert read_manifest(artifact_path(cfg, "feedback"))  # made by the first test
    with FakeLLMServer(EvalAnnotator(set(), "", "")) as server:
        cfg.feedback.llm.base_url = f"{server.url}/v1"
        path = feedback_eval.run(cfg)

    result = json.loads((path / "win_rates.json").read_text())
    manifest = read_manifest(path)
    assert result["n_values"] == [1, 2, 4]
    for trained in ("ratings", "rankings"):
        generated = artifact_path(feedback_eval.with_protocol(cfg, trained), "generate")
        assert manifest["inputs"][f"generate_{trained}"]["path"] == str(generated)
        rows = [
            json.loads(line) for line in (generated / "candidates.jsonl").read_text().splitlines()
        ]
        assert result["reference"][trained] == "first candidate"
        for judged_by in ("ratings", "rankings"):
            for n in (1, 2, 4):
                cell = result["win_rates"][trained][judged_by][str(n)]
                picks = [r["candidates"][feedback_eval.pick_for_n(r["scores"], n)] for r in rows]
                scores = [
                    expected_score(judged_by, p, r["candidates"][0])
                    for p, r in zip(picks, rows, strict=True)
                ]
                assert cell["n"] == 3
                assert cell["rate"] == pytest.approx(sum(scores) / 3)
                assert cell["low"] <= cell["rate"] <= cell["high"]
            # best-of-1 is the reference itself: a tie under both protocols
            assert result["win_rates"][trained][judged_by]["1"]["ties"] == 3

    with Image.open(path / "win_rate_vs_n.png") as image:
        image.verify()
    report = (path / "report.md").read_text()
    assert "| ratings \\ rankings | x | y | equal |" in report  # the consistency table
    assert "Disagreement:" in report and "best-of-4" in report


# feedback_eval on picks of 2 prompts, best of 2
SMALL_EVAL = [
    "stage=feedback_eval",
    "generate.model=base",
    "generate.reference=null",
    "generate.best_of_n=2",
    "generate.best_of_reward=feedback_rm",
    "generate.max_prompts=2",
    "generate.max_new_tokens=4",
    "feedback_eval.n_values=[1,2]",
]


def test_feedback_eval_makes_the_picks_it_lacks(root):
    """One command runs the study: picks not made yet (here: of 2 prompts) are sampled first,
    under each protocol, with the reward models already trained (the pipeline makes the inputs
    the stage declares under a config of its own)."""
    from autorule.pipeline import run_stage

    cfg = config(root, *SMALL_EVAL)
    generated = {
        p: artifact_path(feedback_eval.with_protocol(cfg, p), "generate")
        for p in ("ratings", "rankings")
    }
    assert not any(folder.exists() for folder in generated.values())
    with FakeLLMServer(EvalAnnotator(set(), "", "")) as server:
        cfg.feedback.llm.base_url = f"{server.url}/v1"
        path = run_stage(cfg)["feedback_eval"]
    result = json.loads((path / "win_rates.json").read_text())
    assert result["prompts"] == {"ratings": 2, "rankings": 2}
    for protocol, folder in generated.items():
        assert read_manifest(folder)["status"] == "complete"
        assert f"feedback_rm.protocol={protocol}" in read_manifest(folder)["command"]


STUDY = ["experiment=feedback_study"]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """The one command of the study, on the tiny profile, through the CLI: its root and config."""
    root = tmp_path_factory.mktemp("study")
    command = [sys.executable, "-m", "autorule", "stage=pipeline", *STUDY, f"paths.root={root}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, compose(["stage=pipeline", *STUDY, f"paths.root={root}"])


def test_the_study_runs_on_the_tiny_profile(tiny_study):
    """The tiny random model cannot annotate, so the heuristic stand-in does
    (feedback.annotator=auto); the report has the consistency table and the 2x2 at N=4."""
    from autorule.evaluation.annotators import HeuristicAnnotator

    root, cfg = tiny_study
    consistency = json.loads((artifact_path(cfg, "feedback") / "consistency.json").read_text())
    assert consistency["annotator"]["kind"] == "heuristic"

    # the answers annotated: 5 samples of the base model per prompt, unranked, an artifact of
    # their own; the table is what the stand-in's two rules give on every pair of them
    samples = artifact_path(feedback.candidates_config(cfg), "generate")
    rows = [json.loads(line) for line in (samples / "candidates.jsonl").read_text().splitlines()]
    assert all(set(row["scores"]) == {None} for row in rows)  # unranked: no reward model read
    assert "feedback_rm" not in read_manifest(samples)["inputs"]
    groups = [row["candidates"] for row in rows]
    assert len(groups) == 16 and {len(g) for g in groups} == {5}
    stand_in = HeuristicAnnotator(
        int(cfg.feedback.heuristic.rating_words), float(cfg.feedback.heuristic.rank_margin)
    )
    expected = {row: dict.fromkeys(("x", "y", "equal"), 0) for row in ("x", "y", "equal")}
    for answers in groups:
        for x, y in itertools.combinations(answers, 2):
            a, b = stand_in.rating_of(x), stand_in.rating_of(y)
            implied = "x" if a > b else "y" if b > a else "equal"
            [judged] = stand_in.rank(["q"], [x], [y])
            ranked = {1.0: "x", 0.0: "y", 0.5: "equal"}[judged.verdict.score]
            expected[implied][ranked] += 1
    assert consistency["table"] == expected and consistency["pairs"] == 16 * 10
    assert 0 < consistency["disagreement"] < 1  # a mixed table: the comparison can fail

    report = (artifact_path(cfg, "feedback_eval") / "report.md").read_text()
    assert "heuristic stand-in" in report and "measure nothing" in report
    assert "| ratings \\ rankings | x | y | equal |" in report
    two_by_two = report.split("| trained on \\ judged by | ratings | rankings |")[1]
    cells = [line for line in two_by_two.splitlines() if line.startswith(("| ratings", "| rank"))]
    assert len(cells) == 2 and "n/a" not in two_by_two and "(n=16)" in two_by_two
    assert "![win rate against N](win_rate_vs_n.png)" in report
    rm = artifact_path(feedback_eval.with_protocol(cfg, "ratings"), "feedback_rm")
    metrics = json.loads((rm / "metrics.json").read_text())
    accuracy = metrics["heldout_ratings_accuracy"]
    assert f"{accuracy:.3f} ({metrics['heldout_ratings_pairs']} pairs)" in report


def test_a_sweep_trains_one_reward_model_per_protocol(tiny_study):
    """A Hydra sweep over feedback_rm.protocol: one job per protocol, each its own artifact."""
    root, _ = tiny_study
    sweep = [
        sys.executable,
        "-m",
        "autorule",
        "-m",
        "stage=feedback_rm",
        "experiment=feedback_study",
        "feedback_rm.protocol=ratings,rankings",
        "feedback_rm.max_steps=2",
        f"paths.root={root}",
    ]
    done = subprocess.run(sweep, capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    for protocol in ("ratings", "rankings"):
        swept = compose(
            [
                "stage=feedback_rm",
                "experiment=feedback_study",
                f"feedback_rm.protocol={protocol}",
                "feedback_rm.max_steps=2",
                f"paths.root={root}",
            ]
        )
        metrics = json.loads((artifact_path(swept, "feedback_rm") / "metrics.json").read_text())
        assert metrics["protocol"] == protocol and metrics["global_step"] == 2


def test_picks_are_judged_against_a_reference_file(tiny_study, tmp_path):
    """feedback_eval.reference: reference answers from a file, matched by instruction (as
    AlpacaEval's reference outputs); one it lacks is an error naming the file."""
    from autorule.evaluation.annotators import HeuristicAnnotator

    root, cfg = tiny_study
    picks = artifact_path(feedback_eval.with_protocol(cfg, "ratings"), "generate")
    prompts = [
        json.loads(line)["turns"][0]
        for line in (picks / "responses.jsonl").read_text().splitlines()
    ]
    reference = tmp_path / "reference.json"
    answers = ["ok " * (i % 9) for i in range(len(prompts))]  # 0 to 8 words: ratings 1 to 2
    reference.write_text(
        json.dumps(
            [
                {"instruction": q, "output": a, "generator": "x"}
                for q, a in zip(prompts, answers, strict=True)
            ]
        )
    )
    overrides = ["stage=feedback_eval", *STUDY, f"paths.root={root}"]
    judged = compose([*overrides, f"feedback_eval.reference={reference}"])
    result = json.loads((feedback_eval.run(judged) / "win_rates.json").read_text())
    assert result["reference"] == {"ratings": "reference.json", "rankings": "reference.json"}

    # the ratings protocol's best-of-4 win rate of the ratings model, recomputed from the picks
    stand_in = HeuristicAnnotator(
        int(cfg.feedback.heuristic.rating_words), float(cfg.feedback.heuristic.rank_margin)
    )
    rows = [json.loads(line) for line in (picks / "candidates.jsonl").read_text().splitlines()]
    scores = []
    for row, answer in zip(rows, answers, strict=True):
        pick = row["candidates"][feedback_eval.pick_for_n(row["scores"], 4)]
        a, b = stand_in.rating_of(pick), stand_in.rating_of(answer)
        scores.append(1.0 if a > b else 0.5 if a == b else 0.0)
    cell = result["win_rates"]["ratings"]["ratings"]["4"]
    assert cell["rate"] == pytest.approx(sum(scores) / len(scores)) and cell["n"] == len(rows)

    reference.write_text(json.dumps([{"instruction": prompts[0], "output": "ok"}]))
    lacking = compose([*overrides, f"feedback_eval.reference={reference}"])
    with pytest.raises(ValueError, match=r"reference.json has no answer for 15 of the 16"):
        feedback_eval.run(lacking)


def test_a_bedrock_annotator(root, monkeypatch, tmp_path):
    """The documented Bedrock command's settings (llm@feedback.llm=bedrock, model, region),
    through the real boto3 client against a local Converse-speaking server."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE1234",
        "AWS_SECRET_ACCESS_KEY": "fake-secret-key-for-tests-0123456789",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    n = 4
    cfg = compose(
        [
            f"paths.root={root}",
            "stage=feedback",
            "llm@feedback.llm=bedrock",
            "feedback.llm.model=anthropic.annotator-v1:0",
            "feedback.llm.region=us-east-1",
            "feedback.llm.endpoint_url=URL",  # a transport key: the artifact does not depend on it
            f"feedback.llm.cache_dir={tmp_path / 'llm-cache'}",
            "feedback.llm.progress=false",
            "feedback.llm.retry.max_attempts=1",
            f"feedback.num_instructions={n}",
            "feedback.heldout_instructions=1",
        ]
    )
    rows = preference_rows(artifact_path(cfg, "preprocess") / "test_prefs.parquet", n)
    annotator = Annotator(set(rows["chosen"].astype(str)), unreadable="", biased="")
    with FakeLLMServer(annotator) as server:
        cfg.feedback.llm.endpoint_url = server.url
        path = feedback.run(cfg)
        sent = len(server.requests)
    summary = json.loads((path / "consistency.json").read_text())
    assert sent == 2 * n + 2 * n  # a rating per answer, a ranking per order
    assert summary["annotator"] == {
        "kind": "llm",
        "backend": "bedrock",
        "model": "anthropic.annotator-v1:0",
    }
    # the ratings imply x on every (chosen, rejected) pair; the rankings follow the digests
    pairs = zip(rows["chosen"], rows["rejected"], strict=True)
    wins = sum(digest_wins(str(c), str(r)) == "A" for c, r in pairs)
    assert summary["table"]["x"] == {"x": wins, "y": n - wins, "equal": 0}
    assert summary["unparsed_ratings"] == 0 and summary["failed_calls"] == 0


def plain_annotator(request) -> FakeReply:
    if "[Response A]" in request.prompt:
        return FakeReply(text="Weighing both.\nPreferred: A")
    return FakeReply(text="Reasoning.\nRating: 4")


def small(root, cache, *overrides):
    """Feedback on 4 instructions with a fresh cache, recomputed whatever exists."""
    return config(
        root,
        "stage=feedback",
        "feedback.num_instructions=4",
        "feedback.heldout_instructions=1",
        f"feedback.llm.cache_dir={cache}",
        *overrides,
    )


@pytest.mark.parametrize("key_env", [KEY_ENV, "GATEWAY"])
def test_a_key_the_annotator_echoes_stays_out_of_ratings_and_rankings(
    root, tmp_path, monkeypatch, key_env
):
    """Under a credential-named variable and under one whose name says nothing (only the key
    the backend registered can mask that one)."""
    from fakeserver import echoing_authorization, files_holding

    secret = "annotator-Qw73nRt5vB2xL"
    monkeypatch.setenv(key_env, secret)
    cfg = small(root, tmp_path / "cache", f"feedback.llm.api_key_env={key_env}", "force=true")
    with FakeLLMServer(echoing_authorization(plain_annotator)) as server:
        cfg.feedback.llm.base_url = f"{server.url}/v1"
        path = feedback.run(cfg)
        assert server.requests[0].headers["authorization"] == f"Bearer {secret}"
    ratings = pd.read_parquet(path / "ratings.parquet")
    rankings = pd.read_parquet(path / "rankings.parquet")
    assert ratings["answer"].str.contains("request sent with Bearer").all()
    assert rankings["answer_x_as_a"].str.contains("request sent with Bearer").all()
    assert ratings["rating"].tolist() == [4] * len(ratings)  # the verdicts still read
    assert files_holding(path, secret) == []


def test_an_oversized_rating_is_unparsed_and_a_healthy_rerun_works(root, tmp_path):
    """5,000 digits after "Rating:" (past Python's int-digits limit) are an unreadable answer,
    not a crash; the cached answer replays as unreadable."""
    huge = {"on": True}

    def reply(request):
        if huge["on"] and "[Response A]" not in request.prompt:
            return FakeReply(text="Reasoning.\nRating: " + "9" * 5000)
        return plain_annotator(request)

    cfg = small(root, tmp_path / "cache", "force=true")
    with FakeLLMServer(reply) as server:
        cfg.feedback.llm.base_url = f"{server.url}/v1"
        path = feedback.run(cfg)
        assert read_manifest(path)["counts"]["unparsed_ratings"] == 8
        huge["on"] = False
        path = feedback.run(cfg)
    assert read_manifest(path)["counts"]["unparsed_ratings"] == 8  # replayed, read the same way


def test_calls_allowed_to_fail_make_feedback_provisional(root, tmp_path):
    failing = {"on": True}

    def reply(request):
        if failing["on"] and request.number % 5 == 0:
            return FakeReply(status=500, message="overloaded")
        return plain_annotator(request)

    cfg = small(root, tmp_path / "cache", "feedback.max_failed_calls=100", "force=true")
    with FakeLLMServer(reply) as server:
        cfg.feedback.llm.base_url = f"{server.url}/v1"
        path = feedback.run(cfg)
        manifest = read_manifest(path)
        failed = manifest["counts"]["failed_calls"]
        assert failed == 3 and manifest["provisional"] is True  # 16 calls: 5, 10, 15 failed
        failing["on"] = False
        sent = len(server.requests)
        cfg.force = False
        path = feedback.run(cfg)
        assert len(server.requests) == sent + failed
    assert "provisional" not in read_manifest(path)


def test_calls_allowed_to_fail_make_feedback_eval_provisional(root, tmp_path):
    """The study's evaluation with a fresh annotator cache (the picks exist from the tests
    above): failed judgments make it provisional, and the next run asks only for them."""
    failing = {"on": True}
    annotator = EvalAnnotator(set(), "", "")

    def reply(request):
        if failing["on"] and request.number % 4 == 0:
            return FakeReply(status=500, message="overloaded")
        return annotator(request)

    cfg = config(
        root,
        *SMALL_EVAL,
        "feedback_eval.max_failed_calls=100",
        f"feedback.llm.cache_dir={tmp_path / 'cache'}",
        "force=true",
    )
    with FakeLLMServer(reply) as server:
        cfg.feedback.llm.base_url = f"{server.url}/v1"
        path = feedback_eval.run(cfg)
        manifest = read_manifest(path)
        failed = manifest["counts"]["failed_calls"]
        assert failed > 0 and manifest["provisional"] is True
        failing["on"] = False
        sent = len(server.requests)
        cfg.force = False
        path = feedback_eval.run(cfg)
        # only failed calls are sent (a request asked twice in one batch is sent once)
        assert sent < len(server.requests) <= sent + failed
    assert "provisional" not in read_manifest(path)
