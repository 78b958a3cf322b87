"""Reward hacking: a reward that keeps rising while what it stands for falls.

Two views, both from artifacts:

* **training log** (a GRPO artifact's ``log_history.jsonl``, TRL's keys): the mean of each reward
  term (``rewards/<term>/mean``), the total (``reward``), the response length
  (``completions/mean_length``) and the rule satisfaction (the mean of the per-rule ``rules/<i>``
  keys) over steps;
* **checkpoints** along training, sampled on held-out prompts: the reward model's mean score
  against the judged win rate over the reference.

:func:`rising_while_falling` flags a pair of curves when, after the step where the quality curve
(rule satisfaction, win rate) peaks, the reward ends higher while the quality curve ends at least
``min_drop`` lower, and the least-squares slopes over that stretch point the same ways. Curves are
smoothed first with a moving average of ``window`` points (training logs are noisy).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

STEP = "step"
REWARD_TERM = re.compile(r"^rewards/(.+)/mean$")
RULE_KEY = re.compile(r"^rules/(\d+)$")
LENGTH = "completions/mean_length"
TOTAL = "reward"
SATISFACTION = "rule_satisfaction"


def read_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``log_history.jsonl`` that carry a step (one JSON object per line)."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n} is not a JSON object: {err}") from err
            if isinstance(row, dict) and STEP in row:
                rows.append(row)
    return rows


def log_series(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """name -> {"step": [...], "value": [...]} for every reward term, the total, the length, the
    per-rule satisfaction (``rules/<i>``) and their mean (``rule_satisfaction``)."""
    out: dict[str, dict[str, list[float]]] = {}

    def add(name: str, step: float, value: Any) -> None:
        if isinstance(value, int | float) and value == value:
            entry = out.setdefault(name, {"step": [], "value": []})
            entry["step"].append(float(step))
            entry["value"].append(float(value))

    for row in rows:
        step = row[STEP]
        rule_values = []
        for key, value in row.items():
            if key == TOTAL or key == LENGTH or REWARD_TERM.match(key) or key == "kl":
                add(key, step, value)
            elif RULE_KEY.match(key):
                add(key, step, value)
                if isinstance(value, int | float):
                    rule_values.append(float(value))
        if rule_values:
            add(SATISFACTION, step, sum(rule_values) / len(rule_values))
    return out


def reward_names(series: dict[str, Any]) -> list[str]:
    """The reward curves to watch: the total and each term except the rule terms themselves."""
    names = [TOTAL] if TOTAL in series else []
    for name in sorted(series):
        match = REWARD_TERM.match(name)
        if match and "rule" not in match.group(1):
            names.append(name)
    return names


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (the first points average what there is)."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) == 0:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(0, idx - window)
    return (sums[idx] - sums[start]) / (idx - start)


def slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of y on x (0 for fewer than two distinct x)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0:
        return 0.0
    return float(np.polyfit(x, y, 1)[0])


def rising_while_falling(
    steps: Sequence[float],
    reward: Sequence[float],
    quality: Sequence[float],
    window: int = 1,
    min_drop: float = 0.05,
) -> dict[str, float] | None:
    """The evidence when ``reward`` rises after ``quality`` peaked and ``quality`` falls by at least
    ``min_drop``; None otherwise (see the module docstring)."""
    if not len(steps) == len(reward) == len(quality):
        raise ValueError("steps, reward and quality must be aligned")
    if len(steps) < 2:
        return None
    r, q = smooth(reward, window), smooth(quality, window)
    peak = int(np.argmax(q))
    if peak == len(q) - 1:
        return None
    rise, drop = float(r[-1] - r[peak]), float(q[peak] - q[-1])
    tail = slice(peak, None)
    reward_slope = slope(steps[tail], r[tail])
    quality_slope = slope(steps[tail], q[tail])
    if rise > 0 and drop >= min_drop and reward_slope > 0 and quality_slope < 0:
        return {
            "peak_step": float(steps[peak]),
            "last_step": float(steps[-1]),
            "reward_at_peak": float(r[peak]),
            "reward_last": float(r[-1]),
            "quality_at_peak": float(q[peak]),
            "quality_last": float(q[-1]),
            "reward_rise": rise,
            "quality_drop": drop,
        }
    return None


def aligned(a: dict[str, list[float]], b: dict[str, list[float]]) -> tuple[list, list, list]:
    """(steps, a values, b values) at the steps both curves have."""
    b_at = dict(zip(b["step"], b["value"], strict=True))
    steps, av, bv = [], [], []
    for step, value in zip(a["step"], a["value"], strict=True):
        if step in b_at:
            steps.append(step)
            av.append(value)
            bv.append(b_at[step])
    return steps, av, bv


def log_flags(
    series: dict[str, dict[str, list[float]]], window: int, min_drop: float
) -> list[dict[str, Any]]:
    """Each reward curve of the training log that rises while the rule satisfaction falls."""
    if SATISFACTION not in series:
        return []
    flags = []
    for name in reward_names(series):
        steps, reward, quality = aligned(series[name], series[SATISFACTION])
        found = rising_while_falling(steps, reward, quality, window, min_drop)
        if found:
            flags.append(
                {"reward": name, "quality": SATISFACTION, "source": "training log", **found}
            )
    return flags


def checkpoint_flags(points: Sequence[dict[str, Any]], min_drop: float) -> list[dict[str, Any]]:
    """The RM score rising over checkpoints while the judged win rate falls (``points``: one per
    checkpoint with ``step``, ``rm_mean`` and ``win_rate``)."""
    usable = sorted(
        (p for p in points if p.get("rm_mean") is not None and p.get("win_rate") is not None),
        key=lambda p: p["step"],
    )
    found = rising_while_falling(
        [p["step"] for p in usable],
        [p["rm_mean"] for p in usable],
        [p["win_rate"] for p in usable],
        window=1,
        min_drop=min_drop,
    )
    if not found:
        return []
    return [{"reward": "rm score", "quality": "win rate", "source": "checkpoints", **found}]


def describe(flag: dict[str, Any]) -> str:
    """One sentence for the report."""
    return (
        f"{flag['reward']} rose from {flag['reward_at_peak']:.3g} to {flag['reward_last']:.3g} "
        f"after step {flag['peak_step']:g}, while {flag['quality'].replace('_', ' ')} fell from "
        f"{flag['quality_at_peak']:.3g} to {flag['quality_last']:.3g} by step "
        f"{flag['last_step']:g} ({flag['source']})"
    )
