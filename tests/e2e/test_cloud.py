"""CLoud end to end on the tiny profile: oracle critiques by the tiny judge, the three phases
(interrupted once and resumed), predict_reward, learning over an untrained head, cloud_eval on the
RewardBench-shaped fixture, the classic baseline and the cloud reward term."""

import json
import math

import pandas as pd
import pytest
from transformers import AutoModel, AutoModelForCausalLM, TrainerCallback, set_seed

from autorule.core.artifacts import artifact_path, read_manifest
from autorule.core.config import compose
from autorule.data.models import resolve
from autorule.data.pairs import preference_rows
from autorule.rewards.registry import REWARDS, RewardContext
from autorule.stages import cloud, cloud_eval, critiques, preprocess
from autorule.training.cloud_data import CloudFormat
from autorule.training.cloud_model import (
    CloudRewardModel,
    GenerationSettings,
    load,
    predict_reward,
)

pytestmark = pytest.mark.slow

# Held-out pairs of the learning test: the first 32 filtered test_prefs pairs, critiqued by each
# model itself, as cloud_eval scores them. Measured (tiny profile: 16 reward steps of 8 pairs,
# lm_weight 0.25; seeds 0, 1, 2): trained accuracy 1.0 and BT loss 0.041, 0.019, 0.026; the
# untrained head on the base LM: accuracy 0.16 / 0.31 (seeds 0 / 1) and BT loss 0.698 / 0.695,
# about ln 2 (its margins are tiny). An untrained head's accuracy is high or low by the luck of
# its sign (an untrained classic head reached 0.84), so the loss carries the test; the accuracy
# must also be high and at least the untrained one.
HELDOUT = 32
MAX_HELDOUT_LOSS = 0.15  # measured <= 0.041; ln 2 = 0.693 is chance
MIN_LOSS_DROP = 4  # untrained / trained held-out BT loss: measured 17-37
MIN_ACCURACY = 0.9  # measured 1.0


class Interrupt(TrainerCallback):
    """Stops training at a step no phase-1 run reaches (it has 4 steps)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 9:
            raise RuntimeError("interrupted for the resume test")


class CountTrainings(TrainerCallback):
    def __init__(self):
        self.started = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started += 1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """preprocess -> critiques -> cloud (interrupted in the reward phase, then resumed)."""
    root = tmp_path_factory.mktemp("root")
    cfg = compose(["stage=cloud", f"paths.root={root}"])
    preprocess.run(cfg)
    oracle = critiques.run(cfg)
    with pytest.raises(RuntimeError, match="interrupted"):
        cloud.run(cfg, callbacks=[Interrupt()])
    partial = artifact_path(cfg, "cloud").with_name(f".{artifact_path(cfg, 'cloud').name}.partial")
    self_critiques_time = (partial / cloud.SELF_CRITIQUES).stat().st_mtime_ns
    counter = CountTrainings()
    path = cloud.run(cfg, callbacks=[counter])
    return {
        "cfg": cfg,
        "root": root,
        "oracle": oracle,
        "cloud": path,
        "counter": counter,
        "self_critiques_time": self_critiques_time,
    }


def test_three_phases_resume_and_leave_a_cloud_model(run):
    path = run["cloud"]
    manifest = read_manifest(path)
    assert set(manifest["inputs"]) == {"critiques"}
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["mode"] == "cloud" and metrics["init"] == "critique_sft"
    assert (
        metrics["critique_sft"]["global_step"] == 4 and metrics["critique_sft"]["train_rows"] == 32
    )
    assert metrics["global_step"] == 16 and metrics["resumed_from_step"] == 8
    assert {"train_bt_loss", "train_lm_loss", "train_pair_accuracy"} <= metrics.keys()
    # The resumed run trained only the reward phase: phases 1 and 2 were found done.
    assert run["counter"].started == 1
    assert (path / cloud.SELF_CRITIQUES).stat().st_mtime_ns == run["self_critiques_time"]
    assert not (path / cloud.CRITIQUE_SFT).exists() and not (path / "checkpoints").exists()
    # Phase 2's critiques are the critique-SFT model's own, not the oracle's.
    mine = pd.read_parquet(path / cloud.SELF_CRITIQUES)
    oracle = pd.read_parquet(run["oracle"] / "critiques.parquet")
    assert len(mine) == len(oracle) == 32
    assert (
        (mine[["prompt", "chosen", "rejected"]] == oracle[["prompt", "chosen", "rejected"]])
        .all()
        .all()
    )
    assert (mine["chosen_feedback"] != oracle["chosen_feedback"]).any()
    model = AutoModel.from_pretrained(path / "model")
    assert isinstance(model, CloudRewardModel) and model.config.mode == "cloud"


def test_rerun_is_a_no_op(run):
    assert cloud.run(run["cfg"]) == run["cloud"]


def test_predict_reward_gives_one_critique_and_one_reward_per_input(run):
    model, tokenizer = load(run["cloud"] / "model", "cpu")
    prompts = ["How do I start baking bread?", "Tips for saving money?", "Plan a trip?"]
    answers = ["Sure, happy to help! 1. Gather what you need.", "idk.", "meh. banana"]
    rewards, critiques_ = predict_reward(model, tokenizer, prompts, answers, GenerationSettings(16))
    assert len(rewards) == len(critiques_) == 3
    assert all(isinstance(r, float) and math.isfinite(r) for r in rewards)
    assert all(isinstance(c, str) for c in critiques_)


def heldout_scores(model, tokenizer, pairs):
    settings = GenerationSettings(max_new_tokens=16, batch_size=64)
    n = len(pairs)
    rewards, _ = predict_reward(
        model,
        tokenizer,
        pairs["prompt"].tolist() * 2,
        [*pairs["chosen"], *pairs["rejected"]],
        settings,
    )
    margins = [c - r for c, r in zip(rewards[:n], rewards[n:], strict=True)]
    accuracy = sum(m > 0 for m in margins) / n
    loss = sum(math.log1p(math.exp(-m)) for m in margins) / n
    return accuracy, loss


def test_cloud_learned_more_than_an_untrained_head(run):
    cfg = run["cfg"]
    data = artifact_path(cfg, "preprocess")
    pairs = preference_rows(data / "test_prefs.parquet", HELDOUT)
    model, tokenizer = load(run["cloud"] / "model", "cpu")
    trained = heldout_scores(model, tokenizer, pairs)
    set_seed(int(cfg.cloud.seed))
    lm = AutoModelForCausalLM.from_pretrained(resolve(cfg, "policy"))
    fmt = CloudFormat.from_mapping(cfg.cloud.format)
    untrained_model = CloudRewardModel.from_lm(lm, "cloud", fmt, int(cfg.cloud.max_length)).eval()
    untrained = heldout_scores(untrained_model, tokenizer, pairs)
    assert trained[1] <= MAX_HELDOUT_LOSS, (trained, untrained)
    assert trained[1] * MIN_LOSS_DROP <= untrained[1], (trained, untrained)
    assert trained[0] >= max(MIN_ACCURACY, untrained[0]), (trained, untrained)


def test_cloud_eval_scores_held_out_pairs_and_the_rewardbench_fixture(run):
    cfg = compose(["stage=cloud_eval", f"paths.root={run['root']}"])
    path = cloud_eval.run(cfg)
    metrics = json.loads((path / "metrics.json").read_text())
    assert read_manifest(path)["inputs"]["cloud"]["path"] == str(run["cloud"])
    assert metrics["mode"] == "cloud" and metrics["heldout"]["scored_pairs"] == HELDOUT
    bench = metrics["rewardbench"]
    assert set(bench["sections"]) == {"Chat", "Chat Hard", "Safety", "Reasoning"}
    assert bench["average"] == pytest.approx(sum(bench["sections"].values()) / 4)
    assert bench["pairs"] == 46 and bench["missing_sections"] == []
    scores = pd.read_parquet(path / "scores.parquet")
    assert len(scores) == HELDOUT + 46
    assert set(scores["set"]) == {"heldout", "rewardbench"}
    assert scores["chosen_critique"].map(type).eq(str).all()


def test_classic_baseline_needs_no_critiques(run):
    cfg = compose(["stage=cloud", f"paths.root={run['root']}", "cloud.mode=classic"])
    # Its folder ignores everything about critiques: the judge, the critique format, phase 1.
    for other in (
        "critique.llm.model=another-judge",
        "cloud.critique_sft.learning_rate=1",
        "cloud.lm_weight=0.5",
    ):
        moved = compose(["stage=cloud", f"paths.root={run['root']}", "cloud.mode=classic", other])
        assert artifact_path(moved, "cloud") == artifact_path(cfg, "cloud"), other
    assert (
        artifact_path(
            compose([f"paths.root={run['root']}", "critique.llm.model=another-judge"]), "cloud"
        )
        != run["cloud"]
    )
    path = cloud.run(cfg)
    assert set(read_manifest(path)["inputs"]) == {"preprocess"}
    metrics = json.loads((path / "metrics.json").read_text())
    assert (
        metrics["mode"] == "classic"
        and metrics["global_step"] == 16
        and "train_lm_loss" not in metrics
    )
    assert not (path / cloud.SELF_CRITIQUES).exists()
    model, tokenizer = load(path / "model", "cpu")
    rewards, critiques_ = predict_reward(model, tokenizer, ["Hi?"], ["Hello! How can I help?"])
    assert critiques_ == [""] and len(rewards) == 1


def test_cloud_reward_term(run, tmp_path):
    cfg = run["cfg"]
    reward = REWARDS["cloud"](RewardContext(cfg, None, [], device="cpu"))
    assert reward.__name__ == "cloud"
    pairs = preference_rows(artifact_path(cfg, "preprocess") / "test_prefs.parquet", 4)
    template = str(cfg.preprocess.plain_template)
    formatted = [template.replace("{prompt}", p) for p in pairs["prompt"]]
    chosen = reward(formatted, pairs["chosen"].tolist())
    rejected = reward(formatted, pairs["rejected"].tolist())
    assert len(chosen) == 4 and all(isinstance(r, float) for r in chosen)
    assert sum(c > r for c, r in zip(chosen, rejected, strict=True)) >= 3
    # Conversational prompts and completions give the same rewards as the bare texts.
    chat = reward(
        [[{"role": "user", "content": p}] for p in pairs["prompt"]],
        [[{"role": "assistant", "content": c}] for c in pairs["chosen"]],
    )
    assert chat == pytest.approx(chosen, abs=1e-5)
    with pytest.raises(FileNotFoundError, match="rewards.cloud.model"):
        REWARDS["cloud"](
            RewardContext(
                compose([f"paths.root={run['root']}", f"rewards.cloud.model={tmp_path}"]), None, []
            )
        )
    with pytest.raises(FileNotFoundError, match="python -m autorule stage=cloud"):
        REWARDS["cloud"](RewardContext(compose([f"paths.root={tmp_path}"]), None, []))


def test_dry_run_describes_the_phases_and_writes_nothing(tmp_path, capsys):
    cfg = compose(["stage=cloud", f"paths.root={tmp_path}", "dry_run=true"])
    cloud.run(cfg)
    out = capsys.readouterr().out
    assert "phase 1 critique SFT" in out and "phase 2 self-critiques" in out
    assert "phase 3 reward: BT loss + 0.25 x critique LM loss" in out
    assert "  learning_rate=0.001\n" in out and "critiques" in out
    assert not (tmp_path / "cloud").exists()
