"""Stages sft and rm end to end on the tiny profile: a few optimizer steps on CPU."""

import json

import pytest
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainerCallback,
)

from autorule.artifacts import read_manifest, work_path
from autorule.stages import preprocess, rm, sft

pytestmark = pytest.mark.slow

# The bundled pairs separate easily (polite on-topic numbered steps vs curt off-topic answers):
# 30 steps of the tiny profile reach an accuracy of 1.0 on the 148 held-out pairs; 0.8 leaves
# room for numeric drift across platforms while staying far above chance (0.5).
MIN_ACCURACY = 0.8


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """preprocess -> sft -> rm once under one root, shared by the tests of this module."""
    from autorule.config import compose

    root = tmp_path_factory.mktemp("root")
    cfg = compose(["stage=pipeline", f"paths.root={root}"])
    return {"preprocess": preprocess.run(cfg), "sft": sft.run(cfg), "rm": rm.run(cfg)}


def test_sft_artifact(trained):
    path = trained["sft"]
    manifest = read_manifest(path)
    assert manifest["status"] == "complete"
    metrics = json.loads((path / "metrics.json").read_text())
    assert manifest["metrics"] == metrics
    assert metrics["global_step"] == 8 and metrics["resumed_from_step"] is None
    assert metrics["train_loss"] > 0 and metrics["eval_loss"] > 0
    assert manifest["counts"]["train_rows"] == metrics["train_rows"] > 0
    # One copy of the weights: the work folder's checkpoints are gone.
    assert not (path / "checkpoints").exists()
    model = AutoModelForCausalLM.from_pretrained(path / "model")
    tokenizer = AutoTokenizer.from_pretrained(path / "model")
    assert tokenizer.eos_token == "<|end|>" and model.config.vocab_size == len(tokenizer)


def test_rm_artifact_scores_held_out_pairs(trained):
    path = trained["rm"]
    manifest = read_manifest(path)
    assert manifest["inputs"]["sft"]["path"] == str(trained["sft"])
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["init"] == "sft" and metrics["global_step"] == 30
    assert metrics["accuracy"] >= MIN_ACCURACY, metrics
    assert metrics["reward_std"] > 0 and metrics["scored_pairs"] == metrics["eval_rows"]
    assert {"train_loss", "eval_loss", "reward_mean"} <= metrics.keys()
    model = AutoModelForSequenceClassification.from_pretrained(path / "model")
    assert model.config.num_labels == 1
    assert not (path / "checkpoints").exists()


def test_rerun_is_a_no_op(trained):
    from autorule.config import compose

    cfg = compose(["stage=rm", f"paths.root={trained['rm'].parents[1]}"])
    assert rm.run(cfg) == trained["rm"]


class Interrupted(Exception):
    pass


class StopAfterSave(TrainerCallback):
    """Simulates an interruption right after the checkpoint of ``step`` is written."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise Interrupted(f"interrupted after step {state.global_step}")


def test_sft_resumes_after_an_interruption(make_cfg):
    cfg = make_cfg("stage=sft")
    preprocess.run(cfg)
    with pytest.raises(Interrupted):
        sft.run(cfg, callbacks=[StopAfterSave(4)])
    path = sft.run(cfg)  # the same command again
    assert not work_path(path).exists()
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 4 and metrics["global_step"] == 8


def test_rm_from_the_base_model_needs_no_sft(make_cfg):
    cfg = make_cfg("stage=rm", "rm.init=base", "rm.max_steps=10")
    preprocess.run(cfg)
    path = rm.run(cfg)
    manifest = read_manifest(path)
    assert set(manifest["inputs"]) == {"preprocess"}
    assert manifest["metrics"]["init"] == "base"


def test_launcher_path_saves_the_config_and_commits(make_cfg):
    """launcher.num_processes=2 goes through accelerate and the worker entry point (without GPUs
    accelerate starts a single worker, and gradient accumulation follows the running count)."""
    cfg = make_cfg("stage=sft", "launcher.num_processes=2")
    preprocess.run(cfg)
    path = sft.run(cfg)
    saved = (path / "launch" / "config-machine0.yaml").read_text()
    assert "workdir:" in saved and "stage: sft" in saved
    assert read_manifest(path)["metrics"]["global_step"] == 8
    assert (path / "model" / "config.json").exists()
