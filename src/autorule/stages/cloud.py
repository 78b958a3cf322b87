"""Stage ``cloud``: a critique-out-loud (CLoud) reward model, or the classic baseline.

    python -m autorule stage=cloud                                     # tiny profile, CPU
    python -m autorule stage=cloud cloud.mode=classic                  # the classic baseline
    sbatch scripts/slurm/cloud.sh experiment=cloud_uf                  # the paper's 8B run

A CLoud reward model (Ankner et al. 2024, arXiv 2408.11791) writes a critique of an answer, then
scores prompt, answer and critique with a reward head on the same LM
(:mod:`autorule.training.cloud_model`). ``cloud.mode=cloud`` trains it in three phases:

1. **critique SFT** — the base LM learns to write the oracle critiques of the ``critiques``
   artifact, conditioned on prompt and answer (LM loss on the critique tokens only; both answers
   of each pair). Settings: ``cloud.critique_sft`` over the reward phase's.
2. **self-critiques** — the critique-SFT model rewrites the critiques of the training pairs
   greedily (the paper's on-policy step), so the reward phase trains on critiques of the kind the
   model will write at inference; ``cloud.self_critiques=false`` keeps the oracle ones.
3. **reward** — a new reward head on the critique-SFT model, trained with
   -log sigmoid(r_chosen - r_rejected) + ``cloud.lm_weight`` x CE(critique tokens)
   (:class:`autorule.training.cloud_trainer.CloudTrainer`).

``cloud.mode=classic`` is the paper's baseline: phase 3 alone from the base LM, the same head
on ``prompt + answer + eos``, the Bradley-Terry loss only (settings ``cloud.classic`` over the
reward phase's), on the same pairs (the first ``critique.num_pairs`` of ``critique.split``),
without needing any critique.

All phases run in the same processes (one, or ``accelerate launch`` workers, as sft and rm;
:mod:`autorule.training.launch`) and resume: a finished phase 1 (``critique_sft/metrics.json``)
or phase 2 (``self_critiques.parquet``) is not redone, phase 3 resumes from its last checkpoint.
Phase 2 generates with vLLM when it is installed and one process trains
(``cloud.generation.engine``), else with transformers, each process a share of the pairs.

Artifact: ``model/`` (the CLoud model and tokenizer: ``CloudRewardModel.from_pretrained`` or
``AutoModel.from_pretrained`` after importing ``autorule.training.cloud_model``),
``self_critiques.parquet`` (phase 2's critiques), ``metrics.json`` (train loss and its parts per
phase). Accuracy on held-out pairs and RewardBench is the ``cloud_eval`` stage's.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from autorule.core.config import check_choice, check_number, check_paths
from autorule.core.files import write_parquet_redacted, write_text_atomic
from autorule.core.stage import StageSpec
from autorule.data.models import load_tokenizer, resolve
from autorule.data.pairs import preference_rows
from autorule.training.arguments import METRICS, MODEL, check_training, runtime_keys, trainer_kwargs
from autorule.training.launch import check_launcher, run_training, world_size
from autorule.training.loop import base_metrics, config_kwargs, finish_tracker, fit, save

log = logging.getLogger(__name__)

MODES = ("cloud", "classic")
SIDES = ("chosen", "rejected")
CRITIQUE_SFT = "critique_sft"  # phase 1's folder inside the work folder (dropped at the end)
SELF_CRITIQUES = "self_critiques.parquet"  # phase 2's output, kept in the artifact
# Sub-sections of cloud that are not trainer settings of the reward phase.
SUBSECTIONS = ("critique_sft", "classic", "generation", "format")


def is_cloud(cfg) -> bool:
    return cfg.cloud.mode == "cloud"


def unused_keys(cfg) -> tuple[str, ...]:
    """Settings the other mode reads, left out of this mode's hash."""
    if is_cloud(cfg):  # the pairs come from the critiques artifact, which hashes them
        return ("cloud.classic", "critique.split", "critique.num_pairs")
    return (
        "cloud.critique_sft",
        "cloud.generation",
        "cloud.self_critiques",
        "cloud.lm_weight",
        "cloud.format.critique",
        "cloud.format.request",
    )


def trainer_args(section) -> dict[str, Any]:
    """What the CLoud trainers take beyond the shared arguments."""
    kwargs = section.get("lr_scheduler_kwargs") or {}
    if OmegaConf.is_config(kwargs):
        kwargs = OmegaConf.to_container(kwargs, resolve=True)
    # The pair columns are the collator's, not the model's: keep them.
    return {"lr_scheduler_kwargs": dict(kwargs), "remove_unused_columns": False}


SPEC = StageSpec(
    name="cloud",
    inputs=("critiques", "preprocess"),
    keys=("cloud", "critique.split", "critique.num_pairs", "model.name_or_path", "model.tiny"),
    # How phase 2 generates (engine, batch, memory) changes its speed, not what greedy decoding
    # writes.
    ignore=runtime_keys("cloud")
    + ("cloud.generation.engine", "cloud.generation.batch_size")
    + ("cloud.generation.gpu_memory_utilization",),
    ignore_when=unused_keys,
    only_if={"critiques": is_cloud, "preprocess": lambda cfg: not is_cloud(cfg)},
    trains=True,
    resumable=True,
    trainer_args=trainer_args,
)


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before any model is loaded."""
    check_paths(cfg)
    check_choice(cfg.cloud.mode, "cloud.mode", MODES)
    check_choice(cfg.dataset.name, "dataset.name", ("uf",))  # UltraFeedback preference pairs
    check_launcher(cfg)
    for phase in ("critique_sft", "reward"):
        check_training(
            {**phase_section(cfg, phase), "max_length": cfg.cloud.max_length},
            "cloud",
            world_size(cfg),
        )
    check_number(cfg.cloud.lm_weight, "cloud.lm_weight", integer=False, low=0)


def run(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> Path:
    check(cfg)
    return run_training(cfg, SPEC.name, train, callbacks, describe=describe)


def phase_section(cfg: DictConfig, phase: str) -> dict[str, Any]:
    """The trainer settings of ``phase`` (``critique_sft`` or ``reward``): the reward phase's
    (``cloud.*``), with ``cloud.critique_sft`` or, in classic mode, ``cloud.classic`` over them."""
    section = OmegaConf.to_container(cfg.cloud, resolve=True)
    overrides = {}
    if phase == CRITIQUE_SFT:
        overrides = section[CRITIQUE_SFT]
    elif not is_cloud(cfg):
        overrides = section["classic"]
    for name in SUBSECTIONS:
        section.pop(name, None)
    return {**section, **overrides}


def describe(cfg: DictConfig) -> list[str]:
    """The dry run's lines on the phases (the reward phase's arguments follow them)."""
    if not is_cloud(cfg):
        return [f"mode=classic: reward phase only, from {cfg.model.name_or_path}, BT loss"]
    sft = trainer_kwargs(phase_section(cfg, CRITIQUE_SFT), int(cfg.launcher.num_processes))
    shown = ("learning_rate", "weight_decay", "num_train_epochs", "max_steps", "warmup_steps")
    return [
        "mode=cloud: critique SFT -> self-critiques -> reward head with the CLoud loss",
        "phase 1 critique SFT from "
        f"{cfg.model.name_or_path}: " + " ".join(f"{k}={sft[k]}" for k in shown),
        "phase 2 "
        + ("self-critiques by the critique-SFT model" if cfg.cloud.self_critiques else "skipped")
        + f" (cloud.self_critiques={cfg.cloud.self_critiques})",
        f"phase 3 reward: BT loss + {cfg.cloud.lm_weight} x critique LM loss (arguments below)",
    ]


# --------------------------------------------------------------------------------------------
# The three phases


def train(
    cfg: DictConfig, workdir: Path, inputs: dict[str, Path], callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """Trains in this process (one of many under accelerate); writes model/ and metrics.json."""
    from autorule.training.cloud_data import CloudFormat

    if (workdir / METRICS).is_file():  # phase 3 saved its model; only the commit was missing
        log.info("[cloud] training finished before: %s", workdir / MODEL)
        return json.loads((workdir / METRICS).read_text())
    section = cfg.cloud
    fmt = CloudFormat.from_mapping(section.format)
    tokenizer = load_tokenizer(cfg, "policy")
    metrics: dict[str, Any] = {"mode": str(section.mode)}

    if is_cloud(cfg):
        from autorule.data.pairs import read_critiques

        pairs = read_critiques(inputs["critiques"])
        # ---- 1. critique SFT on the oracle critiques
        sft_dir = workdir / CRITIQUE_SFT
        if (sft_dir / METRICS).is_file():
            log.info("[cloud] phase 1 (critique SFT) is done: %s", sft_dir)
        else:
            critique_sft(cfg, sft_dir, tokenizer, fmt, pairs, callbacks)
        metrics[CRITIQUE_SFT] = json.loads((sft_dir / METRICS).read_text())
        init = str(sft_dir / MODEL)
        # ---- 2. the critique-SFT model rewrites the critiques
        if section.self_critiques:
            pairs = self_critiques(cfg, workdir, init, tokenizer, fmt, pairs)
            metrics["empty_self_critiques"] = int(
                sum((pairs[f"{side}_feedback"] == "").sum() for side in SIDES)
            )
    else:
        split = inputs["preprocess"] / f"{cfg.critique.split}.parquet"
        pairs = preference_rows(split, cfg.critique.num_pairs)
        init = resolve(cfg, "policy")

    # ---- 3. reward head (+ critique LM loss)
    trainer = reward_trainer(cfg, workdir, init, tokenizer, fmt, pairs, callbacks)
    result, resumed_from = fit(trainer, workdir)
    metrics.update(base_metrics(trainer, result, resumed_from, None, len(pairs), 0))
    metrics.update(last_logged(trainer, ("bt_loss", "lm_loss", "pair_accuracy")))
    metrics["init"] = "critique_sft" if is_cloud(cfg) else str(cfg.model.name_or_path)
    save(trainer, workdir, metrics)
    if trainer.is_world_process_zero():
        shutil.rmtree(workdir / CRITIQUE_SFT, ignore_errors=True)  # the model/ holds its LM
    return metrics


def load_lm(name_or_path: str):
    """A causal LM in float32, the optimizer's master weights (bf16 mixed precision autocasts)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32)


def critique_sft(cfg, sft_dir: Path, tokenizer, fmt, pairs: pd.DataFrame, callbacks) -> None:
    """Phase 1: LM loss on the critique tokens of both answers of every pair (a batch of B pairs
    is 2B sequences, as in the CLoud code)."""
    import datasets
    from transformers import Trainer, TrainingArguments

    from autorule.training.cloud_data import PairCollator

    columns, _ = pair_columns(tokenizer, fmt, pairs, int(cfg.cloud.max_length), True)
    # Trainer arguments first: under DeepSpeed ZeRO-3 they make from_pretrained shard the weights.
    args = TrainingArguments(
        **config_kwargs(cfg, "cloud", sft_dir, phase_section(cfg, CRITIQUE_SFT))
    )
    trainer = Trainer(
        model=load_lm(resolve(cfg, "policy")),
        args=args,
        train_dataset=datasets.Dataset.from_dict(columns),
        data_collator=PairCollator(pad_id(tokenizer)),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    result, resumed_from = fit(trainer, sft_dir)
    metrics = base_metrics(trainer, result, resumed_from, None, len(pairs), 0)
    save(trainer, sft_dir, metrics)  # model/, then metrics.json: the phase's done marker
    finish_tracker()  # the reward phase logs to a run of its own


def self_critiques(cfg, workdir: Path, lm_folder: str, tokenizer, fmt, pairs) -> pd.DataFrame:
    """Phase 2: the critique-SFT model's greedy critiques of both answers of every pair.

    Each process writes a share (every n-th request), then the main process joins them into
    ``self_critiques.parquet``; a re-run finds that file and skips the phase.
    """
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM

    from autorule.training.cloud_model import (
        GenerationSettings,
        generate_critiques,
        resolve_engine,
    )

    out = workdir / SELF_CRITIQUES
    if out.is_file():
        log.info("[cloud] phase 2 (self-critiques) is done: %s", out)
        return pd.read_parquet(out)
    state = PartialState()
    settings = GenerationSettings(**OmegaConf.to_container(cfg.cloud.generation, resolve=True))
    if resolve_engine(settings.engine) == "vllm" and state.num_processes > 1:
        # vLLM takes a whole GPU (or several) in one process; sharing it out is not done here.
        log.warning("[cloud] phase 2 uses transformers: vLLM runs only when one process trains")
        settings.engine = "hf"
    texts = [
        fmt.critique_prompt(prompt, answer)
        for side in SIDES
        for prompt, answer in zip(pairs["prompt"], pairs[side], strict=True)
    ]
    mine = list(range(state.process_index, len(texts), state.num_processes))
    dtype = torch.bfloat16 if cfg.cloud.precision == "bf16" and torch.cuda.is_available() else None
    lm = AutoModelForCausalLM.from_pretrained(lm_folder, dtype=dtype or torch.float32)
    lm = lm.to(state.device)
    log.info("[cloud] phase 2: %d self-critiques in this process", len(mine))
    written = generate_critiques(
        lm,
        tokenizer,
        [texts[i] for i in mine],
        int(cfg.cloud.max_length),
        settings,
        lm_folder=lm_folder,
    )
    del lm
    part = workdir / f".self_critiques.part{state.process_index}.json"
    write_text_atomic(part, json.dumps(dict(zip(mine, written, strict=True))))
    state.wait_for_everyone()
    if state.is_main_process:
        found: dict[int, str] = {}
        for index in range(state.num_processes):
            shard = workdir / f".self_critiques.part{index}.json"
            found.update({int(k): v for k, v in json.loads(shard.read_text()).items()})
        n = len(pairs)
        table = pairs[["prompt", "chosen", "rejected"]].copy()
        table["chosen_feedback"] = [found[i] for i in range(n)]
        table["rejected_feedback"] = [found[n + i] for i in range(n)]
        write_parquet_redacted(out, table)
        for index in range(state.num_processes):
            (workdir / f".self_critiques.part{index}.json").unlink(missing_ok=True)
    state.wait_for_everyone()
    return pd.read_parquet(out)


def reward_trainer(cfg, workdir: Path, init: str, tokenizer, fmt, pairs, callbacks=()):
    """Phase 3's trainer: a new, seeded reward head on the LM at ``init``."""
    import datasets
    from transformers import TrainingArguments, set_seed

    from autorule.training.cloud_data import PairCollator
    from autorule.training.cloud_model import CloudRewardModel
    from autorule.training.cloud_trainer import CloudTrainer

    section, max_length = cfg.cloud, int(cfg.cloud.max_length)
    with_critiques = is_cloud(cfg)
    columns, truncated = pair_columns(tokenizer, fmt, pairs, max_length, with_critiques)
    if truncated:
        log.warning(
            "[cloud] %d training sequences were cut to max_length=%d", truncated, max_length
        )
    args = TrainingArguments(**config_kwargs(cfg, "cloud", workdir, phase_section(cfg, "reward")))
    set_seed(int(section.seed))  # the new head's initialisation
    model = CloudRewardModel.from_lm(
        load_lm(init), str(section.mode), fmt, max_length, section.head_dropout
    )
    return CloudTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_dict(columns),
        data_collator=PairCollator(pad_id(tokenizer)),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        lm_weight=float(section.lm_weight) if with_critiques else 0.0,
        with_critiques=with_critiques,
    )


def pair_columns(
    tokenizer, fmt, pairs: pd.DataFrame, max_length: int, with_critiques: bool
) -> tuple[dict[str, list], int]:
    """Token ids and labels of both sides of every pair, as dataset columns, and how many
    sequences max_length cut."""
    from autorule.training.cloud_data import encode_all

    columns: dict[str, list] = {}
    truncated = 0
    for side in SIDES:
        encoded = encode_all(
            tokenizer,
            fmt,
            pairs["prompt"].tolist(),
            pairs[side].tolist(),
            pairs[f"{side}_feedback"].tolist() if with_critiques else None,
            max_length,
        )
        columns[f"{side}_input_ids"] = [e.input_ids for e in encoded]
        columns[f"{side}_labels"] = [e.labels for e in encoded]
        truncated += sum(e.truncated for e in encoded)
    return columns, truncated


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def last_logged(trainer, names: Sequence[str]) -> dict[str, float]:
    """The last logged value of each of ``names`` (prefixed ``train_``)."""
    found = {}
    for entry in trainer.state.log_history:
        found.update({f"train_{n}": float(entry[n]) for n in names if n in entry})
    return found
