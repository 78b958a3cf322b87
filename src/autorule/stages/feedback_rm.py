"""Stage ``feedback_rm``: a reward model trained on one feedback protocol of the feedback artifact.

    python -m autorule stage=feedback_rm feedback_rm.protocol=ratings
    python -m autorule stage=feedback_rm feedback_rm.protocol=rankings
    python -m autorule -m stage=feedback_rm feedback_rm.protocol=ratings,rankings   # both

Bansal et al. (ICLR 2024) trained one reward model per protocol on the same responses:

* ``ratings``: regression; the loss is the MSE between sigmoid(score) and (rating - 1) / 6
  (:func:`autorule.evaluation.feedback_protocols.rating_target`), over the responses whose
  rating parsed;
* ``rankings``: Bradley-Terry, -log sigmoid(score(preferred) - score(other)), over the pairs
  with a strict preference (ties and unread verdicts dropped:
  :func:`autorule.evaluation.feedback_protocols.preferred_pairs`).

Only the feedback artifact's ``split=train`` rows train. A transformers ``Trainer`` with the loss
above trains a one-output sequence-classification head on ``model.name_or_path``, through the
same launcher as rm (:mod:`autorule.training.launch`: in-process or ``accelerate launch``,
resumable from checkpoints). Each answer is read as ``preprocess.plain_template`` + answer + eos.

``feedback_rm.lora_rank`` trains LoRA adapters (peft) on every linear layer, and the score head
whole, instead of every weight, as the paper did (:mod:`autorule.training.lora`); the artifact
keeps the adapter (``adapter/``) and, as ``model/``, the model with it merged in, so the reward
term loads it like any other.

After training, the model's accuracy on the held-out feedback of *both* kinds goes into
``metrics.json``: ``heldout_rankings_accuracy`` (pairs with a strict ranking, the preferred one
scoring higher) and ``heldout_ratings_accuracy`` (pairs of one instruction's answers with
different ratings, the higher-rated one scoring higher).

Artifact: ``model/``, ``metrics.json``, with LoRA ``adapter/``, and the manifest. The reward term
``feedback_rm`` (:mod:`autorule.rewards.feedback_rm`) scores with it, e.g. for best-of-N in
generate.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from autorule.core.config import ConfigError, check_choice, check_paths
from autorule.core.stage import StageSpec
from autorule.evaluation import feedback_protocols as fb
from autorule.rewards.feedback_rm import score_texts, text
from autorule.training import lora
from autorule.training.arguments import check_training, runtime_keys
from autorule.training.launch import check_launcher, run_training, world_size
from autorule.training.loop import base_metrics, config_kwargs, fit, save

log = logging.getLogger(__name__)

PROTOCOLS = ("ratings", "rankings")

SPEC = StageSpec(
    name="feedback_rm",
    inputs=("feedback",),
    keys=(
        "feedback_rm",
        "preprocess.plain_template",
        "model.name_or_path",
        "model.tiny",
        "model.pad_token",
    ),
    # per_protocol only feeds the protocol's own num_train_epochs and global_batch_size
    # (profile=paper), which are hashed: the other protocol's values decide nothing here.
    ignore=runtime_keys("feedback_rm") + ("feedback_rm.per_protocol",),
    ignore_when=lambda cfg: lora.unused_keys(cfg, "feedback_rm"),
    trains=True,
    resumable=True,
    trainer_args=lambda section: {"remove_unused_columns": False},
)


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before any model is loaded."""
    check_paths(cfg)
    check_choice(cfg.feedback_rm.protocol, "feedback_rm.protocol", PROTOCOLS)
    check_launcher(cfg)
    check_training(cfg.feedback_rm, "feedback_rm", world_size(cfg))
    lora.check(cfg.feedback_rm, "feedback_rm")


def run(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> Path:
    check(cfg)
    return run_training(
        cfg, SPEC.name, train, callbacks, describe=lambda cfg: lora.describe(cfg.feedback_rm)
    )


# --------------------------------------------------------------------------------------------
# Data


def training_rows(protocol: str, ratings: pd.DataFrame, rankings: pd.DataFrame) -> dict[str, list]:
    """The training columns of ``protocol`` from the feedback tables' ``split=train`` rows:
    ratings -> ``prompt``, ``answer``, ``target``; rankings -> ``prompt``, ``chosen``,
    ``rejected`` (ties dropped)."""
    if protocol == "ratings":
        rows = ratings[(ratings["split"] == "train") & ratings["rating"].notna()]
        return {
            "prompt": rows["instruction"].astype(str).tolist(),
            "answer": rows["response"].astype(str).tolist(),
            "target": [fb.rating_target(int(r)) for r in rows["rating"]],
        }
    rows = rankings[rankings["split"] == "train"]
    prompts, chosen, rejected = [], [], []
    for row in rows.itertuples():
        labels = [None if pd.isna(row.label) else str(row.label)]
        for better, worse in fb.preferred_pairs(
            [(str(row.response_x), str(row.response_y), labels[0])]
        ):
            prompts.append(str(row.instruction))
            chosen.append(better)
            rejected.append(worse)
    return {"prompt": prompts, "chosen": chosen, "rejected": rejected}


def heldout_comparisons(
    ratings: pd.DataFrame, rankings: pd.DataFrame
) -> dict[str, list[tuple[str, str, str]]]:
    """Held-out (prompt, better, worse) triples under each protocol: strict rankings, and pairs
    of one instruction's answers whose ratings differ."""
    held = rankings[rankings["split"] == "heldout"]
    ranked = [
        (str(r.instruction), better, worse)
        for r in held.itertuples()
        for better, worse in fb.preferred_pairs(
            [(str(r.response_x), str(r.response_y), None if pd.isna(r.label) else str(r.label))]
        )
    ]
    rated = []
    held_ratings = ratings[(ratings["split"] == "heldout") & ratings["rating"].notna()]
    for _, group in held_ratings.groupby("instruction_id"):
        for a, b in itertools.combinations(list(group.itertuples()), 2):
            if int(a.rating) != int(b.rating):
                better, worse = (a, b) if int(a.rating) > int(b.rating) else (b, a)
                rated.append((str(a.instruction), str(better.response), str(worse.response)))
    return {"rankings": ranked, "ratings": rated}


class Collator:
    """Tokenizes and pads a batch of texts (one side, or chosen and rejected sides)."""

    def __init__(self, tokenizer, template: str, max_length: int):
        self.tokenizer, self.template, self.max_length = tokenizer, template, max_length

    def encode(self, prompts: list[str], answers: list[str]) -> dict[str, Any]:
        eos = self.tokenizer.eos_token or ""
        return self.tokenizer(
            [text(self.template, p, a, eos) for p, a in zip(prompts, answers, strict=True)],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            add_special_tokens=False,
        )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        prompts = [f["prompt"] for f in features]
        if "target" in features[0]:
            batch = dict(self.encode(prompts, [f["answer"] for f in features]))
            batch["target"] = torch.tensor([f["target"] for f in features], dtype=torch.float32)
            return batch
        chosen = self.encode(prompts, [f["chosen"] for f in features])
        rejected = self.encode(prompts, [f["rejected"] for f in features])
        return {
            "chosen_input_ids": chosen["input_ids"],
            "chosen_attention_mask": chosen["attention_mask"],
            "rejected_input_ids": rejected["input_ids"],
            "rejected_attention_mask": rejected["attention_mask"],
        }


def protocol_loss(scores, targets=None, rejected_scores=None):
    """The protocol's loss: MSE(sigmoid(score), target) for ratings; Bradley-Terry
    -log sigmoid(chosen - rejected) for rankings (``rejected_scores`` given)."""
    import torch.nn.functional as F

    if rejected_scores is None:
        return F.mse_loss(scores.sigmoid(), targets)
    return -F.logsigmoid(scores - rejected_scores).mean()


def trainer_class():
    from transformers import Trainer

    class FeedbackTrainer(Trainer):
        """A Trainer whose loss is the protocol's (:func:`protocol_loss`)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if "target" in inputs:
                scores = model(
                    input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                ).logits.squeeze(-1)
                loss = protocol_loss(scores, inputs["target"])
            else:
                chosen = model(
                    input_ids=inputs["chosen_input_ids"],
                    attention_mask=inputs["chosen_attention_mask"],
                ).logits.squeeze(-1)
                rejected = model(
                    input_ids=inputs["rejected_input_ids"],
                    attention_mask=inputs["rejected_attention_mask"],
                ).logits.squeeze(-1)
                loss = protocol_loss(chosen, rejected_scores=rejected)
                scores = chosen - rejected
            return (loss, {"scores": scores}) if return_outputs else loss

    return FeedbackTrainer


# --------------------------------------------------------------------------------------------
# Training


def starting_model(init: str, tokenizer):
    """The model training starts from: ``init`` with a one-output score head (new, unless
    ``init`` has one), padding with ``tokenizer``'s pad token."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(init, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def accuracy(model, tokenizer, template: str, triples) -> float | None:
    """Share of (prompt, better, worse) triples where the better answer scores strictly higher."""
    if not triples:
        return None
    eos = tokenizer.eos_token or ""
    better = score_texts(model, tokenizer, [text(template, p, b, eos) for p, b, _ in triples])
    worse = score_texts(model, tokenizer, [text(template, p, w, eos) for p, _, w in triples])
    return sum(b > w for b, w in zip(better, worse, strict=True)) / len(triples)


def train(
    cfg: DictConfig, workdir: Path, inputs: dict[str, Path], callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """Trains in this process (one of many under accelerate); writes model/ and metrics.json."""
    import datasets
    from transformers import TrainingArguments, set_seed

    from autorule.data.models import load_tokenizer, resolve
    from autorule.evaluation.feedback_protocols import RANKINGS, RATINGS

    section = cfg.feedback_rm
    protocol = str(section.protocol)
    ratings = pd.read_parquet(inputs["feedback"] / RATINGS)
    rankings = pd.read_parquet(inputs["feedback"] / RANKINGS)
    columns = training_rows(protocol, ratings, rankings)
    if not columns["prompt"]:
        raise ConfigError(
            f"feedback_rm.protocol={protocol}: the feedback artifact {inputs['feedback']} has no "
            "usable training row (every rating unparsed, or every ranking a tie)"
        )
    log.info("[feedback_rm] %s: %d training rows", protocol, len(columns["prompt"]))

    init = resolve(cfg, "reward")
    tokenizer = load_tokenizer(cfg, name_or_path=init)
    set_seed(int(section.seed))  # the new score head's initialisation
    model = starting_model(init, tokenizer)
    adapters = lora.lora_config(section, "SEQ_CLS")
    if adapters is not None:
        from peft import get_peft_model

        model = get_peft_model(model, adapters)
    template = str(cfg.preprocess.plain_template)
    trainer = trainer_class()(
        model=model,
        args=TrainingArguments(**config_kwargs(cfg, SPEC.name, workdir)),
        train_dataset=datasets.Dataset.from_dict(columns),
        data_collator=Collator(tokenizer, template, int(section.max_length)),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    result, resumed_from = fit(trainer, workdir)

    # Scored with the trained model as it stands (with LoRA, the peft model): the merge below
    # saves the same function.
    heldout = heldout_comparisons(ratings, rankings)
    metrics = {
        **base_metrics(trainer, result, resumed_from, None, len(columns["prompt"]), 0),
        "protocol": protocol,
        "heldout_rankings_pairs": len(heldout["rankings"]),
        "heldout_ratings_pairs": len(heldout["ratings"]),
        "heldout_rankings_accuracy": accuracy(
            trainer.model, tokenizer, template, heldout["rankings"]
        ),
        "heldout_ratings_accuracy": accuracy(
            trainer.model, tokenizer, template, heldout["ratings"]
        ),
    }
    log.info(
        "[feedback_rm] %s: held-out accuracy on rankings %s, on ratings %s",
        protocol,
        metrics["heldout_rankings_accuracy"],
        metrics["heldout_ratings_accuracy"],
    )
    save(trainer, workdir, metrics)
    if adapters is not None:
        if trainer.is_world_process_zero():
            lora.merge_adapter(workdir, lambda: starting_model(init, tokenizer), tokenizer)
        trainer.accelerator.wait_for_everyone()
    return metrics
