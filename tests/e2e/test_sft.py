"""Stage sft end to end on the tiny profile: a few optimizer steps on CPU."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from autorule.artifacts import read_manifest, work_path
from autorule.stages import preprocess, sft

pytestmark = pytest.mark.slow


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
    cfg = make_cfg("stage=sft")  # tiny profile: 8 steps, a checkpoint every 4
    preprocess.run(cfg)
    with pytest.raises(Interrupted):
        sft.run(cfg, callbacks=[StopAfterSave(4)])
    path = sft.run(cfg)  # the same command again
    assert not work_path(path).exists()
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 4 and metrics["global_step"] == 8


def test_sft_through_the_launcher(make_cfg):
    """launcher.num_processes=2 goes through accelerate and the worker entry point (without GPUs
    accelerate starts a single worker, and gradient accumulation follows the running count)."""
    cfg = make_cfg("stage=sft", "launcher.num_processes=2")
    preprocess.run(cfg)
    path = sft.run(cfg)
    saved = (path / "launch" / "config-machine0.yaml").read_text()
    assert "workdir:" in saved and "stage: sft" in saved
    assert read_manifest(path)["metrics"]["global_step"] == 8
    assert (path / "model" / "config.json").exists()
