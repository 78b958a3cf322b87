"""Stage ``cloud_eval``: pairwise accuracy of the cloud artifact's reward model.

    python -m autorule stage=cloud_eval                                  # tiny profile, CPU
    python -m autorule stage=cloud_eval experiment=cloud_uf              # the paper's 8B model
    python scripts/cloud_table.py profile=tiny                           # CLoud vs classic table

Scores both answers of held-out preference pairs and of a RewardBench-shaped dataset with
:func:`autorule.training.cloud_model.predict_reward`: a CLoud model critiques each answer
greedily (``cloud_eval.max_new_tokens``, ``cloud_eval.repetition_penalty``; the CLoud code's
inference settings) and scores it with its critique; a classic model scores the answer alone. A
pair is right when the chosen answer scores strictly higher.

* held-out pairs: the first ``cloud_eval.heldout_pairs`` of preprocess's
  ``cloud_eval.heldout_split``, summarised as the rm stage's scores are
  (:mod:`autorule.training.rm_metrics`);
* RewardBench (``cloud_eval.rewardbench.path``: ``allenai/reward-bench`` or a local copy laid
  out like it; null skips it): accuracy per section (Chat, Chat Hard, Safety, Reasoning) and
  their mean (:mod:`autorule.evaluation.rewardbench`).

Critique generation runs on vLLM when it is installed and a GPU is there
(``cloud_eval.engine``), else with transformers in batches.

Artifact: ``metrics.json`` (``heldout``, ``rewardbench``, the model's ``mode``), ``scores.parquet``
(one row per pair: set, subset, both rewards and both critiques) and the manifest. A local
RewardBench copy is identified by its content, a hub id by id and revision.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from autorule.core.artifacts import StageJob
from autorule.core.config import check_choice, check_number, check_paths
from autorule.core.files import write_json_redacted, write_parquet_redacted
from autorule.core.stage import StageSpec
from autorule.data.pairs import preference_rows
from autorule.evaluation import rewardbench
from autorule.training import rm_metrics
from autorule.training.arguments import METRICS, MODEL

log = logging.getLogger(__name__)

SCORES = "scores.parquet"


def fingerprint(cfg: DictConfig) -> dict[str, Any] | None:
    """What identifies the RewardBench data read (its files' content, or hub id and revision)."""
    from autorule.data.fingerprints import dataset_source

    bench = cfg.cloud_eval.rewardbench
    return dataset_source(str(bench.path), bench.revision) if bench.path else None


SPEC = StageSpec(
    name="cloud_eval",
    inputs=("cloud", "preprocess"),
    keys=("cloud_eval",),
    # Where the data lives is hashed through its fingerprint; how fast the critiques are made
    # does not change greedy decoding's output.
    ignore=(
        "cloud_eval.rewardbench.path",
        "cloud_eval.rewardbench.revision",
        "cloud_eval.batch_size",
        "cloud_eval.engine",
        "cloud_eval.device",
        "cloud_eval.gpu_memory_utilization",
    ),
    fingerprint=fingerprint,
)


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before any model is loaded."""
    check_paths(cfg)
    section = cfg.cloud_eval
    check_choice(section.weighting, "cloud_eval.weighting", tuple(rewardbench.WEIGHTINGS))
    check_choice(cfg.dataset.name, "dataset.name", ("uf",))  # UltraFeedback pairs
    check_number(section.batch_size, "cloud_eval.batch_size", low=1)


def run(cfg: DictConfig) -> Path:
    from autorule.training.cloud_model import GenerationSettings, load

    check(cfg)
    section = cfg.cloud_eval
    with StageJob(cfg, SPEC.name) as job:
        if job.done:
            return job.path
        settings = GenerationSettings(
            max_new_tokens=int(section.max_new_tokens),
            repetition_penalty=float(section.repetition_penalty),
            batch_size=int(section.batch_size),
            engine=str(section.engine),
            gpu_memory_utilization=float(section.gpu_memory_utilization),
        )
        device = None if section.device == "auto" else str(section.device)
        model, tokenizer = load(job.input("cloud") / MODEL, device, str(section.dtype))
        log.info("[cloud_eval] %s model from %s", model.config.mode, job.input("cloud"))

        # ---- held-out preference pairs
        split = job.input("preprocess") / f"{section.heldout_split}.parquet"
        heldout = preference_rows(split, section.heldout_pairs)
        heldout["subset"] = str(section.heldout_split)
        held_scores = score_pairs(model, tokenizer, heldout, settings)
        metrics: dict[str, Any] = {
            "mode": str(model.config.mode),
            "heldout": rm_metrics.summarize(
                held_scores["chosen_reward"].tolist(), held_scores["rejected_reward"].tolist()
            ),
        }
        tables = [held_scores.assign(set="heldout")]

        # ---- RewardBench-shaped data
        bench = section.rewardbench
        if bench.path:
            pairs = rewardbench.load_pairs(
                str(bench.path), str(bench.split), bench.revision, bench.pairs_per_subset
            )
            scores = score_pairs(model, tokenizer, pairs, settings)
            metrics["rewardbench"] = rewardbench.summarize(
                scores["subset"].tolist(),
                scores["chosen_reward"].tolist(),
                scores["rejected_reward"].tolist(),
                str(section.weighting),
            )
            tables.append(scores.assign(set="rewardbench"))
            log.info(
                "[cloud_eval] RewardBench (%s model):\n%s",
                model.config.mode,
                rewardbench.side_by_side({str(model.config.mode): metrics["rewardbench"]}),
            )
        log.info("[cloud_eval] held-out accuracy %.3f", metrics["heldout"]["accuracy"])

        # ---- write the artifact
        write_parquet_redacted(job.workdir / SCORES, pd.concat(tables, ignore_index=True))
        write_json_redacted(job.workdir / METRICS, metrics)
        counts = {
            "heldout_pairs": len(heldout),
            "rewardbench_pairs": int(metrics.get("rewardbench", {}).get("pairs", 0)),
        }
        return job.commit(counts, extra={"metrics": metrics})


def score_pairs(model, tokenizer, pairs: pd.DataFrame, settings) -> pd.DataFrame:
    """Rewards and critiques of both answers of every pair (``prompt``, ``chosen``,
    ``rejected``, ``subset``), all answers in one call so batches mix pairs."""
    from autorule.training.cloud_model import predict_reward

    n = len(pairs)
    prompts = pairs["prompt"].astype(str).tolist()
    answers = pairs["chosen"].astype(str).tolist() + pairs["rejected"].astype(str).tolist()
    rewards, critiques = predict_reward(model, tokenizer, prompts * 2, answers, settings)
    return pd.DataFrame(
        {
            "subset": pairs["subset"].astype(str).tolist(),
            "prompt": prompts,
            "chosen": answers[:n],
            "rejected": answers[n:],
            "chosen_reward": rewards[:n],
            "rejected_reward": rewards[n:],
            "chosen_critique": critiques[:n],
            "rejected_critique": critiques[n:],
        }
    )
