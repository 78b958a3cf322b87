"""Stage ``sft``: supervised fine-tuning of the base model on the chosen answers.

    python -m autorule stage=sft                                      # tiny profile, CPU
    python -m autorule stage=sft profile=paper launcher.num_processes=8
    sbatch scripts/slurm/sft.sh profile=paper

Each row of the preprocessed ``train_sft`` split becomes a prompt-completion pair in the paper's
template: prompt ``<|user|>{prompt}<|assistant|>`` (``formatted_prompt``), completion the chosen
answer followed by the tokenizer's eos. TRL's ``SFTTrainer`` trains with the loss on the completion
tokens only (``completion_only_loss``) and evaluates on ``test_sft``.

Artifact: ``model/`` (weights, config, tokenizer: ``from_pretrained`` loads it), ``metrics.json``
(final train and eval loss, steps, rows) and the manifest. An interrupted run resumes from the last
checkpoint in the work folder when re-run with the same config; see :mod:`autorule.training.launch`
for how several GPUs or nodes are used."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from autorule.core.config import ConfigError, check_paths
from autorule.core.stage import StageSpec
from autorule.data.models import load_tokenizer, resolve
from autorule.training.arguments import check_training, runtime_keys, sequence_kwargs
from autorule.training.launch import check_launcher, run_training, world_size
from autorule.training.loop import base_metrics, config_kwargs, fit, save

SPEC = StageSpec(
    name="sft",
    inputs=("preprocess",),
    keys=("sft", "model.name_or_path", "model.tiny"),
    ignore=runtime_keys("sft"),
    trains=True,
    resumable=True,
    trainer_args=sequence_kwargs,
    version=2,  # 2: Adam betas, epsilon and weight decay are config keys
)


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before any model is loaded (see
    :func:`autorule.training.arguments.check_training`)."""
    check_paths(cfg)
    check_launcher(cfg)
    check_training(cfg.sft, "sft", world_size(cfg))
    batching_kwargs(cfg.sft)


def batching_kwargs(section: DictConfig) -> dict[str, Any]:
    """TRL's packing and padding-free settings from ``sft.packing`` / ``sft.padding_free``.

    ``packing`` packs whole rows into sequences of ``sft.max_length`` tokens (best-fit
    decreasing, TRL's ``bfd``: no row is split); its batches are padding-free. ``padding_free``
    alone keeps ``micro_batch_size`` rows per batch but lays them end to end in one row instead
    of padding each to the longest. Either way the collator gives each row position ids that
    restart at 0, and the attention kernel keeps rows apart: flash_attention_2/3 through the
    cumulative sequence lengths, sdpa and eager through a block-diagonal mask that transformers
    builds from the position ids (docs/architecture.md, "sft and rm").
    """
    packing, padding_free = bool(section.packing), bool(section.padding_free)
    if padding_free and not packing and section.max_length is not None:
        raise ConfigError(
            f"sft.padding_free=true without sft.packing truncates nothing (TRL), so "
            f"sft.max_length={section.max_length} would not hold: set sft.packing=true, or "
            "sft.max_length=null (preprocess already keeps prompts and answers under "
            "preprocess.filter.max_tokens each)"
        )
    kwargs: dict[str, Any] = {"packing": packing, "padding_free": padding_free}
    if packing:
        kwargs["packing_strategy"] = "bfd"
    return kwargs


def run(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> Path:
    check(cfg)
    return run_training(cfg, SPEC.name, train, callbacks)


def prompt_completion(parquet: Path, eos_token: str):
    """A ``datasets.Dataset`` of ``prompt`` = formatted prompt, ``completion`` = response + eos."""
    import datasets

    df = pd.read_parquet(parquet, columns=["formatted_prompt", "response"])
    return datasets.Dataset.from_dict(
        {
            "prompt": df["formatted_prompt"].tolist(),
            "completion": [r + eos_token for r in df["response"]],
        }
    )


def build_trainer(
    cfg: DictConfig,
    workdir: Path,
    inputs: dict[str, Path],
    callbacks: Sequence[Any] = (),
):
    """The stage's ``SFTTrainer`` on the prompt-completion rows of both splits."""
    from trl import SFTConfig, SFTTrainer

    section = cfg.sft
    tokenizer = load_tokenizer(cfg, "policy")
    data = inputs["preprocess"]
    train_ds = prompt_completion(data / f"{section.train_split}.parquet", tokenizer.eos_token)
    eval_ds = prompt_completion(data / f"{section.eval_split}.parquet", tokenizer.eos_token)
    # completion_only_loss: the labels of the prompt tokens are -100, so only the answer is learned.
    args = SFTConfig(
        **config_kwargs(cfg, "sft", workdir), completion_only_loss=True, **batching_kwargs(section)
    )
    return SFTTrainer(
        model=resolve(cfg, "policy"),
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )


def train(
    cfg: DictConfig, workdir: Path, inputs: dict[str, Path], callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """Trains in this process (one of many under accelerate); writes model/ and metrics.json."""
    trainer = build_trainer(cfg, workdir, inputs, callbacks)
    result, resumed_from = fit(trainer, workdir)
    eval_loss = trainer.evaluate()["eval_loss"]

    train_rows, eval_rows = len(trainer.train_dataset), len(trainer.eval_dataset)
    metrics = base_metrics(trainer, result, resumed_from, eval_loss, train_rows, eval_rows)
    save(trainer, workdir, metrics)
    return metrics
