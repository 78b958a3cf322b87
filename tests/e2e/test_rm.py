"""Stage rm end to end on the tiny profile: training, scoring held-out pairs, the init switch."""

import json
import logging

import pytest
from transformers import AutoModelForSequenceClassification

from autorule.core.artifacts import read_manifest
from autorule.core.config import compose
from autorule.stages import preprocess, rm

pytestmark = pytest.mark.slow

# The bundled pairs separate easily (polite on-topic numbered steps vs curt off-topic answers; the
# chosen answers are also longer), so even an untrained reward head can rank them: its random sign
# decides. Measured on the 148 held-out pairs (tiny profile, 30 steps, seeds 0-4):
#   untrained (the stage's init: the sft model plus TRL's seeded new head): accuracy 0.027, 0.000,
#     0.980, 0.473, 0.966; eval loss 0.731, 0.809, 0.634, 0.697, 0.629 (about ln 2 = 0.693)
#   trained: accuracy 1.0 for every seed; eval loss 0.0036, 0.0046, 0.0036, 0.0041, 0.0033
# Accuracy alone therefore cannot show learning (an untrained seed reached 0.98); the loss can: an
# untrained head's margins are tiny (|mean margin| <= 0.22), so its loss stays near ln 2.
MIN_ACCURACY = 0.95  # measured 1.0; room for numeric drift across platforms
MAX_EVAL_LOSS = 0.05  # measured <= 0.0046; 14x below ln 2, which chance (zero margins) gives
MIN_LOSS_DROP = 10  # untrained / trained eval loss: measured 170-200


def test_rm_artifact_scores_held_out_pairs(trained):
    path = trained["rm"]
    manifest = read_manifest(path)
    assert manifest["inputs"]["sft"]["path"] == str(trained["sft"])
    metrics = json.loads((path / "metrics.json").read_text())
    assert manifest["metrics"] == metrics
    assert metrics["init"] == "sft" and metrics["global_step"] == 30
    assert metrics["reward_std"] > 0 and metrics["scored_pairs"] == metrics["eval_rows"]
    assert {"train_loss", "eval_loss", "reward_mean"} <= metrics.keys()
    model = AutoModelForSequenceClassification.from_pretrained(path / "model")
    assert model.config.num_labels == 1
    assert not (path / "checkpoints").exists()


def test_rm_training_learned_more_than_the_untrained_init(trained, tmp_path):
    """The trained scores beat the same init, untrained, on the same held-out pairs."""
    metrics = json.loads((trained["rm"] / "metrics.json").read_text())
    cfg = compose(["stage=rm", f"paths.root={trained['rm'].parents[1]}"])
    data = trained["preprocess"]
    untrained = rm.build_trainer(
        cfg,
        tmp_path,
        {"preprocess": data, "sft": trained["sft"]},
        rm.preference_pairs(data / f"{cfg.rm.train_split}.parquet"),
        rm.preference_pairs(data / f"{cfg.rm.eval_split}.parquet"),
    )
    before = {"eval_loss": untrained.evaluate()["eval_loss"], **rm.score(untrained)}
    assert before["scored_pairs"] == metrics["scored_pairs"]
    assert metrics["eval_loss"] <= MAX_EVAL_LOSS, (metrics, before)
    assert metrics["eval_loss"] * MIN_LOSS_DROP <= before["eval_loss"], (metrics, before)
    assert metrics["accuracy"] >= max(MIN_ACCURACY, before["accuracy"]), (metrics, before)


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


def scores_and_hidden_at_eos(make_cfg, tmp_path, *overrides):
    """The tiny reward model's scores on literal pairs, batched and padded as TRL trains it, and
    the score head applied to the final hidden state at each sequence's eos and one before it."""
    import datasets
    import torch

    pairs = datasets.Dataset.from_dict(
        {
            "prompt": ["<|user|>Name a prime.<|assistant|>", "<|user|>Say hi.<|assistant|>"],
            "chosen": ["Seven.", "Hi there, how can I help you today?"],
            "rejected": ["Nine, which is odd but not a prime at all.", "No."],
        }
    )
    cfg = make_cfg("stage=rm", "rm.init=base", *overrides)
    trainer = rm.build_trainer(cfg, tmp_path, {}, pairs, pairs)
    batch = next(iter(trainer.get_eval_dataloader()))
    ids, mask = batch["input_ids"].cpu(), batch["attention_mask"].cpu()
    model = trainer.model.cpu().eval()
    with torch.no_grad():
        scores = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        rows = torch.arange(len(ids))
        eos_at = mask.sum(dim=-1) - 1  # right padding: the last attended position
        at_eos = model.score(hidden[rows, eos_at]).squeeze(-1)
        before_eos = model.score(hidden[rows, eos_at - 1]).squeeze(-1)
    tokenizer = trainer.processing_class
    assert (ids[rows, eos_at] == tokenizer.eos_token_id).all()  # every sequence ends with eos
    assert (mask == 0).any()  # and some are padded after it
    return scores, at_eos, before_eos


def test_rm_score_is_the_head_at_the_eos_hidden_state(make_cfg, tmp_path):
    """As OpenRLHF reads it; the tiny tokenizer pads with <|pad|>, Llama-3 with a reserved token
    (model.pad_token in conf/model/llama3_8b.yaml)."""
    import torch

    scores, at_eos, before_eos = scores_and_hidden_at_eos(make_cfg, tmp_path)
    torch.testing.assert_close(scores, at_eos)
    assert not torch.allclose(scores, before_eos)


def test_a_tokenizer_padding_with_eos_gets_a_pad_token_of_its_own(make_cfg, tmp_path, caplog):
    """What a Llama-3 tokenizer without model.pad_token would do: pad = eos, and transformers
    would pool at the last token that is not padding, one before eos. The stage picks another
    pad token instead (the tiny vocabulary has no reserved one: a new token, its embedding
    added), says so, and the score is read at eos."""
    import torch

    from autorule.data.models import ADDED_PAD_TOKEN

    with caplog.at_level(logging.WARNING):
        scores, at_eos, before_eos = scores_and_hidden_at_eos(
            make_cfg, tmp_path, "model.pad_token='<|end|>'"
        )
    torch.testing.assert_close(scores, at_eos)
    assert not torch.allclose(scores, before_eos)
    assert (
        f"padding with {ADDED_PAD_TOKEN} instead" in caplog.text
        and "model.pad_token" in caplog.text
    )
