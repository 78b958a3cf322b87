"""Statistics of a reward model's scores on held-out preference pairs.

After training, the ``rm`` stage scores the chosen and the rejected answer of every filtered
``test_prefs`` pair. Two numbers feed GRPO, which standardises the learned reward as
``(r - reward_mean) / reward_std``: the mean and the (population) standard deviation over all
scored answers, chosen and rejected together, since GRPO's samples are of both kinds. The pairwise
accuracy (chosen scored strictly above rejected) says whether the model learned the preference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Share of pairs whose chosen answer scores strictly higher than the rejected one."""
    _check_pairs(chosen, rejected)
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(chosen)


def mean_std(scores: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation of ``scores``."""
    if not scores:
        raise ValueError("no scores")
    mean = sum(scores) / len(scores)
    return mean, math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))


def summarize(chosen: Sequence[float], rejected: Sequence[float]) -> dict[str, float | int]:
    """``accuracy``, ``reward_mean``, ``reward_std`` (over both answers), the mean margin, count."""
    _check_pairs(chosen, rejected)
    mean, std = mean_std([*chosen, *rejected])
    return {
        "accuracy": pairwise_accuracy(chosen, rejected),
        "reward_mean": mean,
        "reward_std": std,
        "margin_mean": sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(chosen),
        "scored_pairs": len(chosen),
    }


def _check_pairs(chosen: Sequence[float], rejected: Sequence[float]) -> None:
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen scores but {len(rejected)} rejected scores")
    if not chosen:
        raise ValueError("no scored pairs")
