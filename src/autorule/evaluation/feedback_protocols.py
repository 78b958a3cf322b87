"""Ratings and rankings: the two feedback protocols, their consistency, and their reward targets.

Bansal et al. (ICLR 2024, "Peering Through Preferences") collected both kinds of feedback on the
same responses:

* **ratings** — each response alone gets an absolute score from 1 to 7 (accuracy, coherence,
  harmlessness); the annotator reasons first and ends with ``Rating: <1-7>`` (:func:`parse_rating`);
* **rankings** — two responses to one instruction are compared, asked in both orders through
  :mod:`autorule.evaluation.pairwise`; the same *position* winning both orders is a tie
  ("equal"), as the response did not decide the verdict (:func:`ranking_label`).

Ratings imply rankings (the higher score wins, equal scores tie: :func:`implied_ranking`);
:func:`consistency` compares the two in a 3x3 table. The paper found them to disagree on about
60% of comparisons, for humans and AI annotators alike.

Reward models learn from either: ratings by regression of sigmoid(score) on (rating - 1) / 6
(:func:`rating_target`), rankings by Bradley-Terry on the preferred pairs, ties dropped
(:func:`preferred_pairs`). Best-of-N picks are scored against a reference with
:func:`sem_win_rate`: (wins + 0.5 ties) / n with a 95% interval of 1.96 x SEM, as the paper.

Everything here is pure and works on annotator text; model output is read with regular
expressions only, never executed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from autorule.evaluation.pairwise import PairVerdict

RATING_MIN, RATING_MAX = 1, 7  # the paper's 7-point scale
# The three outcomes of a comparison of response X with response Y.
X, Y, EQUAL = "x", "y", "equal"
LABELS = (X, Y, EQUAL)
# The feedback artifact's tables (written by the feedback stage, read by feedback_rm).
RATINGS, RANKINGS = "ratings.parquet", "rankings.parquet"

_DECORATION = r"[\s*_`#>\[\]()\"'.]*"
# "Rating: 5", tolerating markdown emphasis, brackets and "5/7" or "5 out of 7". Plain ASCII
# digits, at most three: a longer run (5,000 digits would pass Python's int-digits limit) or a
# full-width digit is no rating.
RATING_LINE = re.compile(
    rf"^{_DECORATION}rating{_DECORATION}\s*[:=]\s*{_DECORATION}([0-9]{{1,3}})"
    rf"(?:\s*(?:/|out of)\s*7)?{_DECORATION}$",
    re.IGNORECASE,
)


# The rating alone on a line: "5" (the released study's prompts put it on the first line). Plain
# ASCII digits, at most three, as in RATING_LINE.
BARE_RATING = re.compile(rf"^{_DECORATION}([0-9]{{1,3}}){_DECORATION}$")
RATING_LINES = ("last", "first")


def parse_rating(answer: str | None, line: str = "last") -> int | None:
    """The 1-7 rating on the answer's last non-empty line (``line="last"``: ``Rating: N``), or on
    its first (``line="first"``: ``N`` alone or ``Rating: N``, the released study's layout);
    None for no such line, a number out of range, another ``Rating:`` line that disagrees (the
    judged response may have planted one), an empty or failed answer."""
    if line not in RATING_LINES:
        raise ValueError(f"feedback.rating_line={line!r}: one of {RATING_LINES}")
    if not answer or not answer.strip():
        return None
    lines = [text.strip() for text in answer.strip().splitlines() if text.strip()]
    chosen = lines[-1] if line == "last" else lines[0]
    match = RATING_LINE.match(chosen) or (BARE_RATING.match(chosen) if line == "first" else None)
    if not match:
        return None
    copies = {int(m.group(1)) for m in map(RATING_LINE.match, lines) if m}
    value = int(match.group(1))
    if copies - {value}:
        return None
    return value if RATING_MIN <= value <= RATING_MAX else None


def ranking_label(verdict: PairVerdict) -> str | None:
    """X's outcome from its two verdicts: ``x`` (X won both orders), ``y`` (Y won both) or
    ``equal`` (the same position won both orders: position bias is a tie); None when a verdict is
    missing."""
    score = verdict.score
    if score is None:
        return None
    return X if score == 1.0 else Y if score == 0.0 else EQUAL


def implied_ranking(rating_x: int | None, rating_y: int | None) -> str | None:
    """The ranking two ratings imply: the higher wins, equal ratings tie; None if one is missing."""
    if rating_x is None or rating_y is None:
        return None
    return X if rating_x > rating_y else Y if rating_y > rating_x else EQUAL


@dataclass
class Consistency:
    """Implied (from ratings) against direct rankings over the pairs that have both."""

    table: dict[str, dict[str, int]]  # implied label -> ranking label -> pairs
    pairs: int  # pairs with both an implied and a direct ranking
    agreements: int  # pairs on the diagonal
    disagreement: float | None  # share of pairs off the diagonal (None: no pair)
    missing: int  # pairs left out: a rating or a ranking verdict is missing

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def consistency(implied: Sequence[str | None], ranked: Sequence[str | None]) -> Consistency:
    """The 3x3 table (rows: implied by ratings, columns: rankings) and the share of disagreement."""
    table = {row: dict.fromkeys(LABELS, 0) for row in LABELS}
    missing = 0
    for a, b in zip(implied, ranked, strict=True):
        if a is None or b is None:
            missing += 1
            continue
        table[a][b] += 1
    pairs = sum(sum(row.values()) for row in table.values())
    agreements = sum(table[label][label] for label in LABELS)
    share = (pairs - agreements) / pairs if pairs else None
    return Consistency(table, pairs, agreements, share, missing)


def format_table(result: Consistency) -> str:
    """The table as markdown (rows: implied by ratings; columns: rankings)."""
    lines = [
        "| ratings \\ rankings | " + " | ".join(LABELS) + " |",
        "|---|" + "---|" * len(LABELS),
    ]
    for row in LABELS:
        lines.append(f"| {row} | " + " | ".join(str(result.table[row][c]) for c in LABELS) + " |")
    return "\n".join(lines)


def rating_target(rating: int) -> float:
    """The regression target of a rating: (rating - 1) / 6, so 1 -> 0 and 7 -> 1 (the paper's
    reward model regresses sigmoid(score) on it)."""
    if not RATING_MIN <= int(rating) <= RATING_MAX:
        raise ValueError(f"a rating is {RATING_MIN}..{RATING_MAX}, got {rating}")
    return (int(rating) - RATING_MIN) / (RATING_MAX - RATING_MIN)


def preferred_pairs(rows: Iterable[tuple[str, str, str | None]]) -> list[tuple[str, str]]:
    """(chosen, rejected) from ``(response_x, response_y, label)`` rows; ties and missing labels
    are dropped (Bradley-Terry learns from strict preferences only)."""
    out = []
    for x, y, label in rows:
        if label == X:
            out.append((x, y))
        elif label == Y:
            out.append((y, x))
    return out


@dataclass
class SemWinRate:
    """(wins + 0.5 ties) / n with a 95% interval of 1.96 x the standard error of the mean."""

    rate: float | None
    low: float | None
    high: float | None
    n: int
    wins: int
    ties: int
    losses: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sem_win_rate(scores: Sequence[float | None]) -> SemWinRate:
    """Win rate of per-comparison scores (1 win, 0.5 tie, 0 loss; None left out)."""
    kept = [float(s) for s in scores if s is not None]
    n = len(kept)
    wins, losses = kept.count(1.0), kept.count(0.0)
    ties = n - wins - losses
    if not n:
        return SemWinRate(None, None, None, 0, 0, 0, 0)
    rate = sum(kept) / n
    # sample standard deviation (n - 1); a single comparison has no spread to estimate
    sd = math.sqrt(sum((s - rate) ** 2 for s in kept) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    return SemWinRate(rate, rate - half, rate + half, n, wins, ties, losses)


def rating_score(rating_pick: int | None, rating_reference: int | None) -> float | None:
    """A pick's score against a reference under the ratings protocol: 1 higher, 0.5 equal."""
    label = implied_ranking(rating_pick, rating_reference)
    return None if label is None else {X: 1.0, EQUAL: 0.5, Y: 0.0}[label]
