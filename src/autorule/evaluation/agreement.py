"""Rule agreement: do the rules prefer the answers people preferred?

For held-out preference pairs, the rule judge says for every rule whether the chosen answer
satisfies it and whether the rejected one does. Per rule:

* ``agree``: the chosen answer satisfies it and the rejected one does not;
* ``disagree``: the reverse;
* ``agreement``: agree / (agree + disagree), over the pairs the rule tells apart (None when it
  tells none apart); ``coverage``: the share of pairs it tells apart.

For the rule set, each answer's score is the share of rules it satisfies (the rules reward), and
the set agrees with a pair when the chosen answer scores higher; ties count half
(``overall_agreement``), as in the pairwise win rate.

:func:`prune` keeps the rules whose agreement reaches a threshold (``evaluate.prune_below``);
a rule that tells no pair apart has shown no agreement and is dropped too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class RuleAgreement:
    index: int
    rule: str
    pairs: int
    agree: int  # chosen satisfies, rejected does not
    disagree: int  # rejected satisfies, chosen does not
    both: int
    neither: int

    @property
    def decided(self) -> int:
        return self.agree + self.disagree

    @property
    def agreement(self) -> float | None:
        return self.agree / self.decided if self.decided else None

    @property
    def coverage(self) -> float:
        return self.decided / self.pairs if self.pairs else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agreement": self.agreement, "coverage": self.coverage}


def per_rule(rules: Sequence[str], chosen: np.ndarray, rejected: np.ndarray) -> list[RuleAgreement]:
    """Per-rule counts from (pairs x rules) boolean satisfaction matrices."""
    chosen, rejected = np.asarray(chosen, dtype=bool), np.asarray(rejected, dtype=bool)
    expected = (chosen.shape[0], len(rules))
    if chosen.shape != expected or rejected.shape != expected:
        raise ValueError(
            f"satisfaction matrices must be (pairs, rules) = {expected}, got "
            f"{chosen.shape} and {rejected.shape}"
        )
    out = []
    for j, rule in enumerate(rules):
        c, r = chosen[:, j], rejected[:, j]
        out.append(
            RuleAgreement(
                index=j,
                rule=rule,
                pairs=int(chosen.shape[0]),
                agree=int(np.sum(c & ~r)),
                disagree=int(np.sum(~c & r)),
                both=int(np.sum(c & r)),
                neither=int(np.sum(~c & ~r)),
            )
        )
    return out


def overall(chosen: np.ndarray, rejected: np.ndarray) -> dict[str, Any]:
    """How often the rule set's score (share of rules satisfied) prefers the chosen answer."""
    chosen, rejected = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    n = int(chosen.shape[0])
    if n == 0 or chosen.shape[1] == 0:
        return {"pairs": n, "agree": 0, "disagree": 0, "ties": n, "overall_agreement": None}
    margin = chosen.mean(axis=1) - rejected.mean(axis=1)
    agree, disagree = int(np.sum(margin > 0)), int(np.sum(margin < 0))
    ties = n - agree - disagree
    return {
        "pairs": n,
        "agree": agree,
        "disagree": disagree,
        "ties": ties,
        "overall_agreement": (agree + 0.5 * ties) / n,
        "mean_margin": float(margin.mean()),
    }


def prune(rows: Sequence[RuleAgreement], threshold: float) -> tuple[list[str], list[str]]:
    """(kept rules, dropped rules): kept when their agreement is at least ``threshold``."""
    kept = [r.rule for r in rows if r.agreement is not None and r.agreement >= threshold]
    dropped = [r.rule for r in rows if r.rule not in kept]
    return kept, dropped
