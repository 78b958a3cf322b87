"""Stage ``feedback``: ratings and rankings of the same responses by one annotator, and how far
the two protocols agree.

    python -m autorule stage=feedback                                   # tiny profile
    python -m autorule stage=feedback llm@feedback.llm=openai \
        feedback.llm.base_url=http://annotator:8000/v1 feedback.llm.model=<served name>
    python -m autorule stage=feedback feedback.source=generate          # sampled answers

Several responses per instruction (five in Bansal et al., ICLR 2024): with
``feedback.source=preprocess`` the chosen and rejected answers of the first
``feedback.num_instructions`` rows of ``feedback.split``; with ``feedback.source=generate``
``feedback.responses_per_instruction`` answers of ``generate.model`` sampled for each of the
first ``feedback.num_instructions`` prompts of ``feedback.prompts`` (a generate artifact of its
own, :func:`candidates_config`, which the pipeline makes first when it is missing).

The annotator (:mod:`autorule.evaluation.annotators`: the LLM role ``feedback.llm``, any backend,
calls concurrent and cached, so a re-run pays only for what is missing, and calls allowed to fail
(``feedback.max_failed_calls``) leave a provisional artifact that the next run completes; or the
heuristic stand-in of ``feedback.annotator``) gives

* a **rating** of each response alone (``feedback.rating_template``; the answer ends with
  ``Rating: <1-7>``; unparsed answers are counted);
* a **ranking** of each pair of responses to one instruction, asked in both orders through
  :func:`autorule.evaluation.pairwise.judge_pairs` (``feedback.ranking_template``); the same
  position winning both orders is "equal".

The ratings' implied rankings are compared with the rankings
(:func:`autorule.evaluation.feedback_protocols.consistency`). The last
``feedback.heldout_instructions`` instructions are marked ``split=heldout``: the feedback_rm
stage trains on the rest and measures its accuracy on them.

Artifact: ``ratings.parquet`` (instruction, response, rating, answer, split), ``rankings.parquet``
(instruction, response_x, response_y, label x|y|equal, implied label, both answers, split),
``consistency.json`` (the 3x3 table, the share of disagreement, unparsed counts) and
``consistency.md``.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from autorule.core.artifacts import StageJob
from autorule.core.config import ConfigError, check_choice, check_number, check_paths, with_values
from autorule.core.files import write_json_redacted, write_parquet_redacted, write_text_redacted
from autorule.core.stage import StageSpec
from autorule.data.pairs import preference_rows
from autorule.evaluation import feedback_protocols as fb
from autorule.evaluation.annotators import (
    Annotator,
    build_annotator,
    check_annotator,
    unused_settings,
)
from autorule.evaluation.feedback_protocols import RANKINGS, RATINGS
from autorule.evaluation.responses import candidate_groups

log = logging.getLogger(__name__)

CONSISTENCY = "consistency.json"
SOURCES = ("preprocess", "generate")
TRAIN, HELDOUT = "train", "heldout"

SPEC = StageSpec(
    name="feedback",
    inputs=("preprocess", "generate"),
    keys=("feedback",),
    llm_roles=("feedback.llm",),
    ignore=("feedback.max_failed_calls",),
    ignore_when=lambda cfg: unused_settings(cfg),
    only_if={
        "preprocess": lambda cfg: cfg.feedback.source == "preprocess",
        "generate": lambda cfg: cfg.feedback.source == "generate",
    },
    # The samples to annotate: a generate artifact of their own, made by the pipeline when
    # missing (and checked with the feedback stage, before any call is paid for).
    input_configs={"generate": lambda cfg: candidates_config(cfg)},
)


def candidates_config(cfg: DictConfig) -> DictConfig:
    """The generate config whose samples are annotated (``feedback.source=generate``):
    ``feedback.responses_per_instruction`` unranked answers of ``generate.model`` to each of the
    first ``feedback.num_instructions`` prompts of ``feedback.prompts``. Unranked, the samples do
    not depend on any reward model, so a feedback reward model may later rank generate's samples
    without a cycle."""
    section = cfg.feedback
    return with_values(
        cfg,
        {
            "generate.prompts": str(section.prompts),
            "generate.max_prompts": section.num_instructions,
            "generate.best_of_n": int(section.responses_per_instruction),
            "generate.best_of_reward": None,
            "generate.reference": None,
            "generate.checkpoints": False,
        },
    )


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before any call is paid for (the sampling of the
    answers to annotate is the generate stage's check, which the pipeline runs beside this one)."""
    check_paths(cfg)
    section = cfg.feedback
    check_choice(section.source, "feedback.source", SOURCES)
    if section.source == "preprocess":
        check_choice(cfg.dataset.name, "dataset.name", ("uf",))  # chosen/rejected answers
    else:
        check_number(
            section.responses_per_instruction,
            "feedback.responses_per_instruction",
            low=2,
            meaning=" (answers sampled per instruction: rankings need two)",
        )
    check_number(section.num_instructions, "feedback.num_instructions", low=1, none_ok=True)
    check_number(section.heldout_instructions, "feedback.heldout_instructions", low=0)
    check_number(section.max_failed_calls, "feedback.max_failed_calls", low=0)
    check_annotator(cfg)


def run(cfg: DictConfig) -> Path:
    check(cfg)
    with StageJob(cfg, SPEC.name) as job:
        if job.done:
            return job.path
        section = cfg.feedback
        groups = load_groups(cfg, job)
        splits = split_labels(len(groups), int(section.heldout_instructions))
        annotator = build_annotator(cfg)
        ratings, rating_answers = rate(annotator, groups, splits)
        rankings, judged, implied, labels = rank(annotator, groups, splits, rating_of(ratings))
        failed = sum(a.failed for a in rating_answers) + sum(j.verdict.failed for j in judged)
        if failed > int(section.max_failed_calls):
            raise RuntimeError(
                f"{failed} annotator calls failed (feedback.max_failed_calls="
                f"{section.max_failed_calls}); finished calls are cached: re-run the same "
                "command to retry only the failed ones"
            )
        result = fb.consistency(implied, labels)
        summary: dict[str, Any] = {
            **result.as_dict(),
            "annotator": annotator.describe(),
            "rated_responses": len(ratings),
            "unparsed_ratings": sum(a.unparsed for a in rating_answers),
            "ranked_pairs": len(rankings),
            "unparsed_rankings": sum(j.verdict.unparsed for j in judged),
            "failed_calls": failed,
        }
        log.info(
            "[feedback] ratings and rankings disagree on %s of %d pairs\n%s",
            "n/a" if result.disagreement is None else f"{result.disagreement:.1%}",
            result.pairs,
            fb.format_table(result),
        )
        write_artifact(job.workdir, ratings, rankings, summary, result)
        counts = {
            "instructions": len(groups),
            "rated_responses": len(ratings),
            "ranked_pairs": len(rankings),
            "unparsed_ratings": summary["unparsed_ratings"],
            "unparsed_rankings": summary["unparsed_rankings"],
            "failed_calls": failed,
            "consistency_pairs": result.pairs,
        }
        return job.commit(counts, extra={"consistency": summary})


# --------------------------------------------------------------------------------------------
# Steps


def split_labels(instructions: int, held: int) -> list[str]:
    """``train`` for each instruction but the last ``held``, which are ``heldout``."""
    if held >= instructions:
        raise ConfigError(
            f"feedback.heldout_instructions={held} leaves no training instruction of {instructions}"
        )
    log.info("[feedback] %d instructions, %d held out", instructions, held)
    return [TRAIN] * (instructions - held) + [HELDOUT] * held


def rate(
    annotator: Annotator, groups: list[tuple[str, list[str]]], splits: list[str]
) -> tuple[pd.DataFrame, list]:
    """A rating of each response alone: the table, and the annotator's answers."""
    rated = [
        (g, i, instruction, response)
        for g, (instruction, responses) in enumerate(groups)
        for i, response in enumerate(responses)
    ]
    answers = annotator.rate(
        [q for _, _, q, _ in rated], [r for _, _, _, r in rated], desc="feedback: ratings"
    )
    ratings = pd.DataFrame(
        {
            "instruction_id": [g for g, _, _, _ in rated],
            "response_id": [i for _, i, _, _ in rated],
            "instruction": [q for _, _, q, _ in rated],
            "response": [r for _, _, _, r in rated],
            "answer": [a.answer for a in answers],
            "rating": pd.array([a.rating for a in answers], dtype="Int64"),
            "split": [splits[g] for g, _, _, _ in rated],
        }
    )
    return ratings, answers


def rating_of(ratings: pd.DataFrame) -> dict[tuple[int, int], int | None]:
    """(instruction, response) -> its rating (None when unread)."""
    return {
        (row.instruction_id, row.response_id): None if pd.isna(row.rating) else int(row.rating)
        for row in ratings.itertuples()
    }


def rank(
    annotator: Annotator,
    groups: list[tuple[str, list[str]]],
    splits: list[str],
    ratings: dict[tuple[int, int], int | None],
) -> tuple[pd.DataFrame, list, list[str | None], list[str | None]]:
    """A ranking of each pair of one instruction's responses, asked in both orders, beside the
    ranking the ratings imply: the table, the annotator's judgments, the implied rankings and
    the ranking labels (None where unread)."""
    pairs = [
        (g, i, j)
        for g, (_, responses) in enumerate(groups)
        for i, j in itertools.combinations(range(len(responses)), 2)
    ]
    judged = annotator.rank(
        [groups[g][0] for g, _, _ in pairs],
        [groups[g][1][i] for g, i, _ in pairs],
        [groups[g][1][j] for g, _, j in pairs],
        desc="feedback: rankings",
    )
    labels = [fb.ranking_label(j.verdict) for j in judged]
    implied = [fb.implied_ranking(ratings[(g, i)], ratings[(g, j)]) for g, i, j in pairs]
    rankings = pd.DataFrame(
        {
            "instruction_id": [g for g, _, _ in pairs],
            "x_id": [i for _, i, _ in pairs],
            "y_id": [j for _, _, j in pairs],
            "instruction": [groups[g][0] for g, _, _ in pairs],
            "response_x": [groups[g][1][i] for g, i, _ in pairs],
            "response_y": [groups[g][1][j] for g, _, j in pairs],
            "label": labels,
            "implied": implied,
            "answer_x_as_a": [j.answer_x_as_a for j in judged],
            "answer_x_as_b": [j.answer_x_as_b for j in judged],
            "split": [splits[g] for g, _, _ in pairs],
        }
    )
    return rankings, judged, implied, labels


def write_artifact(
    workdir: Path,
    ratings: pd.DataFrame,
    rankings: pd.DataFrame,
    summary: dict[str, Any],
    result: fb.Consistency,
) -> None:
    write_parquet_redacted(workdir / RATINGS, ratings)
    write_parquet_redacted(workdir / RANKINGS, rankings)
    write_json_redacted(workdir / CONSISTENCY, summary)
    write_text_redacted(workdir / "consistency.md", consistency_markdown(result) + "\n")


def consistency_markdown(result: fb.Consistency) -> str:
    share = "n/a" if result.disagreement is None else f"{result.disagreement:.1%}"
    return (
        "Rows: the ranking implied by the ratings; columns: the ranking feedback "
        "(x: the first response preferred, y: the second, equal: a tie).\n\n"
        f"{fb.format_table(result)}\n\nDisagreement: {share} of {result.pairs} pairs "
        f"({result.missing} left out: a rating or a ranking could not be read)."
    )


def load_groups(cfg: DictConfig, job: StageJob) -> list[tuple[str, list[str]]]:
    """(instruction, responses) per instruction, from the configured source."""
    section = cfg.feedback
    limit = section.num_instructions
    if section.source == "preprocess":
        split = job.input("preprocess") / f"{section.split}.parquet"
        if not split.is_file():
            raise FileNotFoundError(f"feedback.split={section.split}: no {split}")
        rows = preference_rows(split, limit)
        return [
            (str(r.prompt), [str(r.chosen), str(r.rejected)])
            for r in rows.itertuples()
            if str(r.chosen) != str(r.rejected)
        ]
    groups = candidate_groups(job.input("generate"))
    return groups if limit is None else groups[: int(limit)]
