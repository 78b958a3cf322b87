"""Stage ``oracle``: a strong judge labels pairs of sampled answers, CLoud's preference data.

    python -m autorule stage=oracle experiment=cloud_paper \
        oracle.llm.base_url=http://judge-node:8000/v1

CLoud (Ankner et al. 2024, arXiv 2408.11791) built its reward-model data from prompts of
UltraFeedback and UltraInteract: the policy answered each prompt, and a strong oracle model said
which answer was better (and critiqued both: ``critiques`` with ``critique.pairs=oracle``).
Here the prompts are the ``train`` split of the preprocess artifact of ``oracle.dataset``
(``cloud_prompts``: both sources through :mod:`autorule.data.sources`); ``generate.model`` samples
``oracle.responses_per_prompt`` answers to each (a generate artifact of its own,
:func:`samples_config`, unranked, which the pipeline makes first when missing:
``StageSpec.input_configs``); every pair of one prompt's distinct answers is judged by the
LLM role ``oracle.llm`` with :func:`autorule.evaluation.pairwise.judge_pairs`, in both orders.

A pair is labelled only when both orders agree. A tie (the verdict followed the position), an
unreadable answer or a failed call drops the pair and is counted. ``oracle.annotator=heuristic``
(or ``auto`` with the tiny random model, which never writes a readable verdict) ranks with the
feedback study's stand-in (:class:`autorule.evaluation.annotators.HeuristicAnnotator`) instead:
offline runs only, its labels measure nothing.

Artifact: ``train_prefs.parquet`` (``prompt``, ``prompt_id``, ``chosen``, ``rejected`` as
message lists, ``chosen_content``, ``rejected_content``: the preference table the critiques and
cloud stages read, as preprocess writes it), ``labels.parquet`` (every pair judged, both
answers, the verdict). Counts: prompts, pairs, labelled, ties, unparsed, failed_calls,
identical_answers.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from autorule import llm as llms
from autorule.core.artifacts import StageJob
from autorule.core.config import (
    ConfigError,
    check_choice,
    check_number,
    check_paths,
    with_dataset,
    with_values,
)
from autorule.core.stage import StageSpec
from autorule.evaluation.annotators import (
    Annotator,
    HeuristicAnnotator,
    LLMAnnotator,
    resolve_kind,
)
from autorule.evaluation.pairwise import PairJudgment
from autorule.evaluation.responses import candidates

log = logging.getLogger(__name__)

PREFERENCES, LABELS = "train_prefs.parquet", "labels.parquet"
ANNOTATORS = ("auto", "llm", "heuristic")


def samples_config(cfg: DictConfig) -> DictConfig:
    """The generate config whose samples are labelled: ``oracle.responses_per_prompt`` unranked
    answers of ``generate.model`` to each of the first ``oracle.num_prompts`` prompts of the
    ``oracle.split`` split of ``oracle.dataset``'s preprocess artifact."""
    section = cfg.oracle
    other = with_dataset(cfg, str(section.dataset), key="oracle.dataset")
    return with_values(
        other,
        {
            "generate.prompts": str(section.split),
            "generate.max_prompts": section.num_prompts,
            "generate.best_of_n": int(section.responses_per_prompt),
            "generate.best_of_reward": None,
            "generate.reference": None,
            "generate.checkpoints": False,
        },
    )


SPEC = StageSpec(
    name="oracle",
    inputs=("generate",),
    keys=("oracle",),
    llm_roles=("oracle.llm",),
    ignore=("oracle.max_failed_calls",),
    ignore_when=lambda cfg: unused_keys(cfg),
    input_configs={"generate": samples_config},
)


def annotator_kind(cfg: DictConfig) -> str:
    """``llm`` or ``heuristic``: ``oracle.annotator``, ``auto`` meaning the stand-in when the
    role ``oracle.llm`` is the tiny random model."""
    return resolve_kind(str(cfg.oracle.annotator), OmegaConf.select(cfg, "oracle.llm.model"))


def unused_keys(cfg: DictConfig) -> tuple[str, ...]:
    """The settings of the judge not used decide nothing."""
    if annotator_kind(cfg) == "heuristic":
        return ("oracle.llm", "oracle.template")
    return ("oracle.heuristic",)


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before any call is paid for."""
    from autorule.llm import check_role

    check_paths(cfg)
    section = cfg.oracle
    check_number(
        section.responses_per_prompt,
        "oracle.responses_per_prompt",
        low=2,
        meaning=" (answers sampled per prompt: a pair needs two)",
    )
    check_number(section.num_prompts, "oracle.num_prompts", low=1, none_ok=True)
    check_number(section.max_failed_calls, "oracle.max_failed_calls", low=0)
    check_choice(section.annotator, "oracle.annotator", ANNOTATORS)
    missing = [
        p
        for p in ("{instruction}", "{response_a}", "{response_b}")
        if p not in str(section.template)
    ]
    if missing:
        raise ConfigError(f"oracle.template lacks the placeholder(s) {missing}")
    if annotator_kind(cfg) == "llm":
        check_role(cfg, "oracle.llm")
    # The sampling is the generate stage's check, which the pipeline runs under samples_config
    # beside this one (autorule.pipeline.check_stages), before any call is paid for.


def build_annotator(cfg: DictConfig) -> Annotator:
    """The judge ``oracle.annotator`` names (only its ranking is used)."""
    if annotator_kind(cfg) == "heuristic":
        log.warning(
            "[oracle] oracle.annotator=%s: the heuristic stand-in ranks the answers (the larger "
            "share of distinct words wins), not a language model; its labels measure nothing",
            cfg.oracle.annotator,
        )
        heuristic = cfg.oracle.heuristic
        return HeuristicAnnotator(int(heuristic.rating_words), float(heuristic.rank_margin))
    return LLMAnnotator(llms.build(cfg, "oracle.llm"), "", str(cfg.oracle.template))


def run(cfg: DictConfig) -> Path:
    check(cfg)
    with StageJob(cfg, SPEC.name) as job:
        if job.done:
            return job.path
        section = cfg.oracle

        # ---- load: several answers per prompt, every pair of distinct answers
        groups = candidates(job.input("generate"))
        pairs, identical = answer_pairs(groups)
        log.info("[oracle] %d prompts, %d pairs to judge", len(groups), len(pairs))

        # ---- judge each pair in both orders
        annotator = build_annotator(cfg)
        judged = annotator.rank(
            [p["prompt"] for p in pairs],
            [p["x"] for p in pairs],
            [p["y"] for p in pairs],
            desc="oracle: pairs",
        )
        failed = sum(j.verdict.failed for j in judged)
        if failed > int(section.max_failed_calls):
            raise RuntimeError(
                f"{failed} oracle calls failed (oracle.max_failed_calls="
                f"{section.max_failed_calls}); finished calls are cached: re-run the same "
                "command to retry only the failed ones"
            )
        preferences, labels, counts = label_pairs(pairs, judged)
        if preferences.empty:
            raise RuntimeError(
                f"the oracle labelled none of {len(pairs)} pairs ({counts}); see "
                f"{job.workdir / LABELS}"
            )

        # ---- write the artifact
        preferences.to_parquet(job.workdir / PREFERENCES, index=False)
        labels.to_parquet(job.workdir / LABELS, index=False)
        counts.update(prompts=len(groups), identical_answers=identical)
        log.info("[oracle] %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
        return job.commit(counts, extra={"annotator": annotator.describe()})


def answer_pairs(groups: list[dict]) -> tuple[list[dict], int]:
    """Every pair of one prompt's answers, answers that are the same text skipped (and
    counted: no preference can be read from them)."""
    pairs, identical = [], 0
    for group in groups:
        for i, j in itertools.combinations(range(len(group["answers"])), 2):
            x, y = str(group["answers"][i]), str(group["answers"][j])
            if x == y:
                identical += 1
                continue
            pairs.append({"id": group["id"], "prompt": group["prompt"], "x": x, "y": y})
    return pairs, identical


def label_pairs(
    pairs: list[dict], judged: list[PairJudgment]
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """The preference table from the verdicts: X chosen when it won both orders, Y when it lost
    both; a tie (the orders disagree) and a pair with an unread or failed answer are dropped and
    counted. Returns (preferences, every pair with its verdict, counts)."""
    rows, labels = [], []
    counts = {"pairs": len(pairs), "labelled": 0, "ties": 0, "unparsed": 0, "failed_calls": 0}
    for pair, judgment in zip(pairs, judged, strict=True):
        verdict = judgment.verdict
        score = verdict.score
        counts["failed_calls"] += verdict.failed
        if score is None:
            counts["unparsed"] += 1 if verdict.unparsed else 0
            label = "failed" if verdict.failed else "unparsed"
        elif score == 0.5:
            counts["ties"] += 1
            label = "tie"
        else:
            chosen, rejected = (pair["x"], pair["y"]) if score == 1.0 else (pair["y"], pair["x"])
            label = "x" if score == 1.0 else "y"
            counts["labelled"] += 1
            rows.append(
                {
                    "prompt": pair["prompt"],
                    "prompt_id": pair["id"],
                    "chosen": messages(pair["prompt"], chosen),
                    "rejected": messages(pair["prompt"], rejected),
                    "chosen_content": chosen,
                    "rejected_content": rejected,
                }
            )
        labels.append(
            {
                **pair,
                "label": label,
                "answer_x_as_a": judgment.answer_x_as_a,
                "answer_x_as_b": judgment.answer_x_as_b,
            }
        )
    columns = ["prompt", "prompt_id", "chosen", "rejected", "chosen_content", "rejected_content"]
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(labels), counts


def messages(prompt: str, answer: str) -> list[dict[str, str]]:
    """One exchange as the message list preprocess's preference splits hold."""
    return [{"content": prompt, "role": "user"}, {"content": answer, "role": "assistant"}]
