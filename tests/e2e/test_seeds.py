"""The seed experiments end to end on the tiny profile, from the bundled copies: CLoud's oracle
data into the critiques stage, the ratings-vs-rankings study on its own instructions against
AlpacaEval's davinci-003 answers, and Feedback-Collection with every row kept."""

import json

import pandas as pd
import pytest

from autorule.core.artifacts import artifact_path
from autorule.core.config import compose
from autorule.data.synthetic import make_alpaca_eval, make_feedback_collection
from autorule.pipeline import run_stage

pytestmark = pytest.mark.slow


def counts(folder):
    return json.loads((folder / "manifest.json").read_text())["counts"]


def test_cloud_paper_oracle_pairs_reach_the_critiques(tmp_path):
    from autorule.core.artifacts import StageInputError
    from autorule.stages import oracle

    cfg = compose(
        [
            "stage=pipeline",
            "experiment=cloud_paper",
            "profile=tiny",
            f"paths.root={tmp_path}",
            "oracle.num_prompts=6",
            "pipeline.stages=[oracle,critiques]",
        ]
    )
    # Alone, the stage names the command that samples its answers; the pipeline makes them.
    with pytest.raises(StageInputError, match="stage=generate .*dataset=cloud_prompts"):
        oracle.run(cfg)
    done = run_stage(cfg)
    samples = oracle.samples_config(cfg)
    assert counts(artifact_path(samples, "generate"))["prompts"] == 6
    assert counts(artifact_path(samples, "preprocess"))["ultrainteract_rows"] == 24
    labelled = counts(done["oracle"])
    assert labelled["pairs"] == 6
    assert labelled["labelled"] + labelled["ties"] + labelled["unparsed"] == 6
    table = pd.read_parquet(done["oracle"] / "train_prefs.parquet")
    critiques = pd.read_parquet(done["critiques"] / "critiques.parquet")
    assert critiques["chosen"].tolist() == table["chosen_content"].tolist()
    assert len(critiques) == labelled["labelled"] > 0


def test_feedback_paper_judges_unseen_alpaca_eval_against_davinci(tmp_path):
    cfg = compose(
        [
            "stage=pipeline",
            "experiment=feedback_paper",
            "profile=tiny",
            f"paths.root={tmp_path}",
            "feedback.num_instructions=6",
            "feedback.heldout_instructions=2",
            "generate.max_prompts=5",
            "feedback_eval.n_values=[1,4]",
        ]
    )
    done = run_stage(cfg)
    made = counts(done["preprocess"])
    # 29 bundled AlpacaEval rows: 12 selfinstruct (a training source), 1 repeating a Dolly
    # instruction, 16 unseen.
    assert (
        made["alpaca_eval_unseen_rows_in"],
        made["alpaca_eval_unseen_dropped_training_dataset"],
        made["alpaca_eval_unseen_dropped_training_instruction"],
        made["alpaca_eval_unseen_rows"],
    ) == (29, 12, 1, 16)
    result = json.loads((done["feedback_eval"] / "win_rates.json").read_text())
    assert result["reference"]["ratings"] == "alpaca_eval_davinci003 (5 instructions matched)"
    unseen = pd.read_parquet(done["preprocess"] / "alpaca_eval_unseen.parquet")
    davinci = {(r["instruction"], r["output"]) for r in make_alpaca_eval(0)}
    assert set(zip(unseen["prompt"], unseen["reference"], strict=True)) <= davinci
    assert "selfinstruct" not in set(unseen["dataset"])


def test_rubric_prometheus_keeps_all_rows_in_the_recipe_lines(tmp_path):
    cfg = compose(
        [
            "stage=preprocess",
            "experiment=rubric_prometheus",
            "dataset=prometheus",
            "profile=tiny",
            f"paths.root={tmp_path}",
        ]
    )
    folder = run_stage(cfg)["preprocess"]
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    source = make_feedback_collection(0)
    assert len(rows) == len(source) == 5 * 120  # five graded responses per instruction
    first = rows[0]["rubric_items"][0]
    assert "<score>1.0</score>: " + source["orig_score1_description"][0] in first["rubric_str"]
    assert "<score>5.0</score>: " in first["rubric_str"]
    assert "between 1 and 5" in first["grader_output_format_instruction"]
    assert all(r["convo"] == rows[0]["convo"] for r in rows[:5])
    assert counts(folder)["train_dropped_duplicate"] == 0
