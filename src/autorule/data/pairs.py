"""Choosing the comparisons the extract stage shows the reasoner (pure, seeded).

A :class:`Pair` is two conversations labelled A and B and which one the human preferred. Sides are
drawn at random per pair so the reasoner cannot learn "A always wins"; ``chosen_first=True``
instead always puts the preferred conversation first, as the released AutoRule code did.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    """Two conversations and the human's preference between them."""

    pair_id: str
    conversation_a: list[dict[str, str]]
    conversation_b: list[dict[str, str]]
    winner: str  # "A" or "B"
    row_ids: dict = field(default_factory=dict)  # ids of the dataset row it came from


def messages(raw: Sequence) -> list[dict[str, str]]:
    """Plain ``{"role", "content"}`` dicts from a parquet message list (numpy arrays of dicts)."""
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in raw]


def place(
    chosen: list, rejected: list, rng: random.Random, chosen_first: bool
) -> tuple[list, list, str]:
    """(conversation A, conversation B, winner) with the sides drawn from ``rng``."""
    if chosen_first or rng.random() < 0.5:
        return chosen, rejected, "A"
    return rejected, chosen, "B"


def uf_pairs(df: pd.DataFrame, num_examples: int, seed: int, chosen_first: bool) -> list[Pair]:
    """``num_examples`` UltraFeedback preference rows drawn without replacement with ``seed``."""
    n = min(int(num_examples), len(df))
    if n < num_examples:
        log.warning(
            "extract.num_examples=%d but train_prefs has only %d rows; using all",
            num_examples,
            len(df),
        )
    rows = df.sample(n=n, random_state=seed).reset_index(drop=True)
    rng = random.Random(seed)
    pairs = []
    for i, row in rows.iterrows():
        a, b, winner = place(messages(row["chosen"]), messages(row["rejected"]), rng, chosen_first)
        pairs.append(Pair(f"uf-{i:05d}", a, b, winner, {"prompt_id": str(row["prompt_id"])}))
    return pairs


def mt_pairs(
    df: pd.DataFrame,
    examples_per_question: int,
    seed: int,
    chosen_first: bool,
    num_questions: int | None = None,
    judged_turns_only: bool = True,
) -> list[Pair]:
    """Up to ``examples_per_question`` judgments per question (ties are already dropped).

    A judgment of turn ``t`` is shown with the first ``t`` user/assistant exchanges only: the
    human who judged turn 1 had not seen turn 2. ``judged_turns_only=False`` shows both turns
    whatever the judged turn, as the released AutoRule code did.
    """
    rng = random.Random(seed)
    questions = sorted(df["question_id"].unique())
    if num_questions is not None:
        questions = questions[: int(num_questions)]
    pairs = []
    for q in questions:
        group = df[df["question_id"] == q]
        take = group.sample(n=min(int(examples_per_question), len(group)), random_state=seed)
        for j, (_, row) in enumerate(take.iterrows()):
            turn = int(row["turn"]) if "turn" in row and pd.notna(row["turn"]) else None
            conv_a, conv_b = messages(row["conversation_a"]), messages(row["conversation_b"])
            if turn and judged_turns_only:
                conv_a, conv_b = conv_a[: 2 * turn], conv_b[: 2 * turn]
            if row["winner"] == "model_a":
                chosen, rejected = conv_a, conv_b
            elif row["winner"] == "model_b":
                chosen, rejected = conv_b, conv_a
            else:
                raise ValueError(
                    f"MT-Bench winner must be model_a or model_b after preprocess, "
                    f"got {row['winner']!r} (question {q})"
                )
            a, b, winner = place(chosen, rejected, rng, chosen_first)
            row_ids = {"question_id": int(q), "turn": turn, "winner": str(row["winner"])}
            for key in ("judge", "model_a", "model_b"):
                if key in row:
                    row_ids[key] = str(row[key])
            pairs.append(Pair(f"mt-{int(q)}-{j:02d}", a, b, winner, row_ids))
    return pairs


def preference_rows(parquet, num_pairs: int | None = None) -> pd.DataFrame:
    """``prompt``, ``chosen``, ``rejected`` (the bare request and the final answers) of the first
    ``num_pairs`` rows of a preprocessed UltraFeedback split (all rows for None), in order: the
    pairs the critiques and cloud stages train on."""
    df = pd.read_parquet(parquet, columns=["prompt", "chosen_content", "rejected_content"])
    if num_pairs is not None:
        if int(num_pairs) < 1:
            raise ValueError(f"critique.num_pairs must be positive or null, got {num_pairs}")
        df = df.head(int(num_pairs))
    return df.rename(columns={"chosen_content": "chosen", "rejected_content": "rejected"})


# The critiques artifact: each preference pair with the oracle's critique of each answer.
CRITIQUES = "critiques.parquet"
CRITIQUE_COLUMNS = ("prompt", "chosen", "rejected", "chosen_feedback", "rejected_feedback")


def read_critiques(folder: Path) -> pd.DataFrame:
    """The critiques artifact's table (in ``folder``), checked for its columns."""
    df = pd.read_parquet(folder / CRITIQUES)
    missing = [c for c in CRITIQUE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{folder / CRITIQUES} lacks the columns {missing}")
    return df
