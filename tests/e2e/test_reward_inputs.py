"""Tiny GRPO rewarded by the reward models it reads, trained here: the grpo manifest names each
reward model's artifact and hash, and retraining one with another setting moves the grpo artifact
(tests/unit/rewards/test_registry.py checks every term the same way on stand-in artifacts)."""

import pytest

from autorule.core.artifacts import artifact_path, is_up_to_date, read_manifest
from autorule.core.config import compose
from autorule.pipeline import run_stage

pytestmark = pytest.mark.slow


def test_grpo_names_the_reward_models_it_reads(trained, capsys):
    root = trained["sft"].parents[1]
    overrides = [
        "stage=grpo",
        f"paths.root={root}",
        "grpo.rewards=[rm,feedback_rm]",
        "grpo.max_steps=1",
        "feedback.source=preprocess",  # the heuristic stand-in annotates (tiny profile)
    ]
    cfg = compose(overrides)
    for stage in ("feedback", "feedback_rm"):
        run_stage(compose([*overrides, f"stage={stage}"]))
    path = run_stage(cfg)["grpo"]

    inputs = read_manifest(path)["inputs"]
    for stage in ("rm", "feedback_rm"):
        model = artifact_path(cfg, stage)
        assert inputs[stage] == {"path": str(model), "hash": read_manifest(model)["artifact_hash"]}
    assert is_up_to_date(cfg, "grpo")[0]

    # a reward model with another setting: the dry run shows another grpo folder
    for setting in ("feedback_rm.protocol=ratings", "rm.learning_rate=1e-4"):
        capsys.readouterr()
        moved = compose([*overrides, setting, "dry_run=true"])
        run_stage(moved)
        shown = capsys.readouterr().out
        assert f"grpo: {artifact_path(moved, 'grpo')}" in shown
        assert artifact_path(moved, "grpo") != path, setting
