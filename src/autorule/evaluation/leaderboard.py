"""The leaderboard protocol of win rates (``evaluate.protocol=leaderboard``), the AutoRule paper's
UltraFeedback win-rate prompt: the judge ranks the two outputs, best first, and answers with the
ranking as a list, ``[{"model": "A", "rank": 1}, {"model": "B", "rank": 2}]``.

The list is model output, so it is read as data only, JSON or else a Python literal, never run
(:func:`autorule.evaluation.pairwise.read_data`): the last bracketed list of the answer that
reads. A list that is not exactly one rank 1 and one rank 2 for the outputs A and B is unparsed
(and counted), and so is an answer holding another well-formed ranking that names the other
winner (copies that disagree, as with the pairwise verdict line). Everything else (both orders, a
disagreement counting as a tie, the Wilson interval) is :mod:`autorule.evaluation.pairwise`'s:
this module only parses.
"""

from __future__ import annotations

from typing import Any

from autorule.evaluation.pairwise import LETTERS, read_data
from autorule.rules.parsing import bracket_spans

# Keys the entries of a ranking may name their output and rank under.
_MODEL_KEYS = ("model", "output", "name")
_RANK_KEYS = ("rank", "position")


def parse_ranking(answer: str) -> tuple[str | None, str]:
    """``("A" | "B", method)``: the output ranked first in the judge's list, or ``(None, "")``
    when the answer holds no readable ranking of exactly the two outputs, or when another
    ranking in the answer (a quoted response's, say) names another winner: as with the pairwise
    verdict lines, copies that disagree leave the answer unparsed."""
    readings = [(span, read_data(span)) for span in bracket_spans(answer or "")]
    readings = [read for _, read in readings if read is not None]
    if not readings:
        return None, ""
    value, method = readings[-1]  # the last list that reads is the answer, ranked well or not
    best = _first(value)
    if best is None:
        return None, ""
    others = {_first(other) for other, _ in readings[:-1]} - {None}
    if others - {best}:
        return None, ""
    return best, method


def _first(value: Any) -> str | None:
    """The output ranked 1 in a list of two entries ranking A and B as 1 and 2; else None."""
    if not isinstance(value, list) or len(value) != 2:
        return None
    ranks = {}
    for entry in value:
        if not isinstance(entry, dict):
            return None
        model = next((entry[k] for k in _MODEL_KEYS if k in entry), None)
        rank = next((entry[k] for k in _RANK_KEYS if k in entry), None)
        if not isinstance(model, str) or isinstance(rank, bool) or rank not in (1, 2, "1", "2"):
            return None
        ranks[model.strip().upper()] = int(rank)
    if set(ranks) != set(LETTERS) or sorted(ranks.values()) != [1, 2]:
        return None
    return next(letter for letter, rank in ranks.items() if rank == 1)
