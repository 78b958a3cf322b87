"""run_training around a stand-in train function, the tracker's lifetime and resume checkpoints.

No model is trained here: the preprocess input is a literal manifest and ``train`` a stub.
"""

import json
import logging
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from autorule.core.artifacts import artifact_path, read_manifest
from autorule.training.launch import run_training
from autorule.training.loop import finish_tracker, last_complete_checkpoint


class FakeWandb(types.ModuleType):
    """Stands in for the ``wandb`` module: an open run, and ``finish`` closes it."""

    def __init__(self):
        super().__init__("wandb")
        self.run = object()
        self.finished: list[int] = []

    def finish(self, exit_code=None):
        self.finished.append(exit_code)
        self.run = None


@pytest.fixture
def fake_wandb(monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


# The fields of a complete manifest that readers rely on (artifacts.read_manifest).
COMPLETE = {"status": "complete", "config_hash": "x", "artifact_hash": "x", "files": {}}


def with_preprocess(cfg):
    """Fakes a complete preprocess artifact, which is all run_training checks of it."""
    folder = artifact_path(cfg, "preprocess")
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(COMPLETE))
    return cfg


def stub_train(cfg, workdir, inputs, callbacks):
    metrics = {"global_step": 3}
    (workdir / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def test_finish_tracker_closes_an_open_run_only(fake_wandb, monkeypatch):
    finish_tracker()
    assert fake_wandb.finished == [0] and fake_wandb.run is None
    finish_tracker()  # no run open: nothing to finish
    assert fake_wandb.finished == [0]
    monkeypatch.delitem(sys.modules, "wandb")
    finish_tracker()  # wandb never imported: it stays so
    assert "wandb" not in sys.modules


def test_each_in_process_stage_finishes_its_tracker_run(make_cfg, fake_wandb):
    cfg = with_preprocess(make_cfg("stage=sft"))
    path = run_training(cfg, "sft", stub_train)
    assert read_manifest(path)["status"] == "complete"
    assert fake_wandb.finished == [0] and fake_wandb.run is None


def test_a_failed_stage_finishes_its_run_as_failed(make_cfg, fake_wandb):
    cfg = with_preprocess(make_cfg("stage=sft"))

    def crash(*args):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        run_training(cfg, "sft", crash)
    assert fake_wandb.finished == [1]


def checkpoint(folder, step, state='{"global_step": 1}'):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.ones(2)}, str(path / "model.safetensors"))  # whole weights
    if state is not None:
        (path / "trainer_state.json").write_text(state)
    return path


def test_resume_skips_and_removes_checkpoints_killed_while_saving(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    complete = checkpoint(folder, 10)
    checkpoint(folder, 9)  # numerically smaller name sorted wrongly as text: 9 < 10
    killed = checkpoint(folder, 20, state=None)  # killed before the trainer state was written
    torn = checkpoint(folder, 30, state='{"global_st')  # killed while writing it
    (folder / "runs").mkdir()  # other folders are left alone
    with caplog.at_level(logging.WARNING):
        assert last_complete_checkpoint(folder) == complete
    assert not killed.exists() and not torn.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-10", "checkpoint-9", "runs"]
    assert "incomplete checkpoint" in caplog.text and "checkpoint-20" in caplog.text


def test_resume_only_reads_when_asked_not_to_remove(tmp_path):
    folder = tmp_path / "checkpoints"
    killed = checkpoint(folder, 20, state=None)
    assert last_complete_checkpoint(folder, remove_incomplete=False) is None
    assert killed.exists()
    assert last_complete_checkpoint(tmp_path / "absent") is None


def test_a_checkpoint_with_truncated_weights_falls_back_to_the_one_before(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        path = checkpoint(folder, step, state=json.dumps({"global_step": step}))
        save_file({"w": torch.ones(64, 64)}, str(path / "model.safetensors"))
        torch.save({"step": step}, path / "optimizer.pt")
    good, cut, torn = (folder / f"checkpoint-{s}" for s in (10, 20, 30))
    # A full disk or an interrupted copy: the weights of 20 cut short, the optimizer of 30.
    weights = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    optimizer = (torn / "optimizer.pt").read_bytes()
    (torn / "optimizer.pt").write_bytes(optimizer[:-40])
    with caplog.at_level(logging.WARNING):
        assert last_complete_checkpoint(folder) == good
    assert not cut.exists() and not torn.exists()
    assert "model.safetensors is cut short" in caplog.text and "optimizer.pt" in caplog.text
    assert "resuming from the newest complete checkpoint" in caplog.text
