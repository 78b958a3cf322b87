"""Stage ``rm``: the Bradley-Terry reward model, and its scores on held-out pairs.

    python -m autorule stage=rm                                       # tiny profile, CPU
    python -m autorule stage=rm rm.init=base                          # from the base model
    sbatch scripts/slurm/rm.sh profile=paper

TRL's ``RewardTrainer`` trains a sequence-classification head (one output) on the preprocessed
``train_prefs`` pairs, each answer in the paper's template ``<|user|>{prompt}<|assistant|>{answer}``
plus eos. By default (``rm.init=sft``, as in the paper) it starts from the ``sft`` artifact's
model, which gets a new score head; ``rm.init=base`` starts from ``model.name_or_path``.

The score is the head applied at eos, as OpenRLHF (which trained the released reward model) reads
it: TRL ends every sequence with eos and drops, rather than cuts, pairs longer than
``rm.max_length``, and transformers reads the score at the last token that is not the pad token.
That is eos only when the pad token differs from it: ``model.pad_token``, or else one the stage
picks and logs when the tokenizer has none or pads with eos (an unused reserved special token of
the vocabulary, else a new token with its embedding; ``data.models.ensure_score_pad_token``).

After training, every filtered ``test_prefs`` pair is scored (TRL drops pairs longer than
``rm.max_length``) and :mod:`autorule.training.rm_metrics` gives the pairwise accuracy and the mean
and standard deviation of the reward that GRPO normalises with.

Artifact: ``model/`` (``AutoModelForSequenceClassification.from_pretrained`` loads it),
``metrics.json`` (final train and eval loss, ``accuracy``, ``reward_mean``, ``reward_std``) and the
manifest. Resuming and multi-GPU launching work as for ``sft`` (:mod:`autorule.training.launch`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from autorule.core.artifacts import artifact_path
from autorule.core.config import check_choice, check_paths
from autorule.core.stage import StageSpec
from autorule.data.models import ADDED_PAD_TOKEN, ensure_score_pad_token, load_tokenizer, resolve
from autorule.training import rm_metrics
from autorule.training.arguments import MODEL, check_training, runtime_keys, sequence_kwargs
from autorule.training.launch import artifact_state, check_launcher, run_training, world_size
from autorule.training.loop import base_metrics, config_kwargs, fit, save

log = logging.getLogger(__name__)

INITS = ("sft", "base")


# The reward model starts from the SFT model (rm.init=sft, the paper's setup) or from the base
# model (rm.init=base); only the first reads, and is hashed with, the sft artifact. The pad token
# decides where the score is read, so it is part of the output.
SPEC = StageSpec(
    name="rm",
    inputs=("preprocess", "sft"),
    keys=("rm", "model.name_or_path", "model.tiny", "model.pad_token"),
    ignore=runtime_keys("rm"),
    only_if={"sft": lambda cfg: cfg.rm.init == "sft"},
    trains=True,
    resumable=True,
    trainer_args=sequence_kwargs,
    version=2,  # 2: Adam betas, epsilon and weight decay are config keys
)


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before any model is loaded (see
    :func:`autorule.training.arguments.check_training`)."""
    check_paths(cfg)
    check_choice(cfg.rm.init, "rm.init", INITS)
    check_launcher(cfg)
    check_training(cfg.rm, "rm", world_size(cfg))


def run(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> Path:
    check(cfg)
    return run_training(cfg, SPEC.name, train, callbacks, describe=describe_init)


def describe_init(cfg: DictConfig) -> list[str]:
    """The dry run's line on the model training starts from (and whether it is there yet)."""
    if cfg.rm.init == "sft":
        sft = artifact_path(cfg, "sft")
        return [f"init=sft -> {sft} ({artifact_state(sft)})"]
    return [f"init=base -> {cfg.model.name_or_path}"]


def preference_pairs(parquet: Path):
    """A ``datasets.Dataset`` of ``prompt``, ``chosen``, ``rejected`` (TRL adds eos and joins)."""
    import datasets

    df = pd.read_parquet(
        parquet, columns=["formatted_prompt", "chosen_content", "rejected_content"]
    )
    return datasets.Dataset.from_dict(
        {
            "prompt": df["formatted_prompt"].tolist(),
            "chosen": df["chosen_content"].tolist(),
            "rejected": df["rejected_content"].tolist(),
        }
    )


def pair_scores(logits, labels=None):
    """Per-batch hook: TRL's collator stacks all chosen answers, then all rejected ones, so the
    model's (2B, 1) scores become (B, 2) rows of (chosen, rejected) before they are gathered."""
    import torch

    if isinstance(logits, tuple):
        logits = logits[0]
    chosen, rejected = torch.chunk(logits.squeeze(-1), chunks=2)
    return torch.stack([chosen, rejected], dim=-1)


def build_trainer(
    cfg: DictConfig,
    workdir: Path,
    inputs: dict[str, Path],
    train_ds,
    eval_ds,
    callbacks: Sequence[Any] = (),
):
    """The stage's ``RewardTrainer``, its model as training starts from it (TRL seeds with
    ``rm.seed`` before it adds the new score head, so the same config gives the same head)."""
    from trl import RewardConfig, RewardTrainer

    init = str(inputs["sft"] / MODEL) if cfg.rm.init == "sft" else resolve(cfg, "reward")
    tokenizer = load_tokenizer(cfg, name_or_path=init)  # TRL copies its pad token into the model
    model: Any = init
    # The score is read at the last token that is not padding: eos only when the two differ.
    if ensure_score_pad_token(tokenizer, where="rm") == ADDED_PAD_TOKEN:
        # A new embedding: the model is loaded here, so it can be resized.
        from transformers import AutoModelForSequenceClassification, set_seed

        set_seed(int(cfg.rm.seed))  # the new score head, as TRL would seed it
        model = AutoModelForSequenceClassification.from_pretrained(init, num_labels=1)
        ensure_score_pad_token(tokenizer, model)
    return RewardTrainer(
        model=model,
        args=RewardConfig(**config_kwargs(cfg, "rm", workdir)),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=list(callbacks),
        preprocess_logits_for_metrics=pair_scores,
    )


def score(trainer) -> dict[str, float | int]:
    """Scores the trainer's eval pairs (all processes take part; predictions come back in order)
    and summarises them (:func:`autorule.training.rm_metrics.summarize`)."""
    scores = trainer.predict(trainer.eval_dataset).predictions
    return rm_metrics.summarize(scores[:, 0].tolist(), scores[:, 1].tolist())


def train(
    cfg: DictConfig, workdir: Path, inputs: dict[str, Path], callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """Trains in this process (one of many under accelerate); writes model/ and metrics.json."""
    section = cfg.rm
    data = inputs["preprocess"]
    train_ds = preference_pairs(data / f"{section.train_split}.parquet")
    eval_ds = preference_pairs(data / f"{section.eval_split}.parquet")
    trainer = build_trainer(cfg, workdir, inputs, train_ds, eval_ds, callbacks)
    result, resumed_from = fit(trainer, workdir)
    eval_loss = trainer.evaluate()["eval_loss"]

    metrics = {
        **base_metrics(trainer, result, resumed_from, eval_loss, len(train_ds), len(eval_ds)),
        **score(trainer),
        "init": str(section.init),
    }
    save(trainer, workdir, metrics)
    return metrics
