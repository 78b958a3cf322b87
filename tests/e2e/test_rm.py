"""Stage rm end to end on the tiny profile: training, scoring held-out pairs, the init switch."""

import json

import pytest
from transformers import AutoModelForSequenceClassification

from autorule.artifacts import read_manifest
from autorule.config import compose
from autorule.stages import preprocess, rm

pytestmark = pytest.mark.slow

# The bundled pairs separate easily (polite on-topic numbered steps vs curt off-topic answers):
# the tiny profile's 30 steps reached accuracy 1.0 on the 148 held-out pairs for seeds 0, 1, 2
# and for rm.init=base; 0.8 leaves room for numeric drift across platforms and is still far
# above chance (0.5).
MIN_ACCURACY = 0.8


def test_rm_artifact_scores_held_out_pairs(trained):
    path = trained["rm"]
    manifest = read_manifest(path)
    assert manifest["inputs"]["sft"]["path"] == str(trained["sft"])
    metrics = json.loads((path / "metrics.json").read_text())
    assert manifest["metrics"] == metrics
    assert metrics["init"] == "sft" and metrics["global_step"] == 30
    assert metrics["accuracy"] >= MIN_ACCURACY, metrics
    assert metrics["reward_std"] > 0 and metrics["scored_pairs"] == metrics["eval_rows"]
    assert {"train_loss", "eval_loss", "reward_mean"} <= metrics.keys()
    model = AutoModelForSequenceClassification.from_pretrained(path / "model")
    assert model.config.num_labels == 1
    assert not (path / "checkpoints").exists()


def test_rm_rerun_is_a_no_op(trained):
    root = trained["rm"].parents[1]
    cfg = compose(["stage=rm", f"paths.root={root}"])
    assert rm.run(cfg) == trained["rm"]


def test_rm_from_the_base_model_needs_no_sft(make_cfg):
    cfg = make_cfg("stage=rm", "rm.init=base", "rm.max_steps=10")
    preprocess.run(cfg)
    path = rm.run(cfg)
    manifest = read_manifest(path)
    assert set(manifest["inputs"]) == {"preprocess"}
    assert manifest["metrics"]["init"] == "base"
