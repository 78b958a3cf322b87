"""Rule agreement on literal judge outputs: per-rule counts, the rule set's agreement, pruning,
and the evaluate stage's step that asks the rule judge (a stand-in with the RuleJudge API)."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from autorule.evaluation.agreement import overall, per_rule, prune
from autorule.stages import evaluate

RULES = ["answers the question", "uses steps", "is polite"]
# 4 pairs x 3 rules: does the chosen / the rejected answer satisfy each rule?
CHOSEN = np.array(
    [
        [1, 1, 0],
        [1, 0, 1],
        [1, 1, 1],
        [0, 0, 1],
    ],
    dtype=bool,
)
REJECTED = np.array(
    [
        [0, 1, 0],
        [1, 1, 0],
        [0, 0, 1],
        [0, 1, 0],
    ],
    dtype=bool,
)


def test_per_rule_counts():
    rows = per_rule(RULES, CHOSEN, REJECTED)
    # rule 0: chosen-only in pairs 0 and 2, both in pair 1, neither in pair 3
    assert (rows[0].agree, rows[0].disagree, rows[0].both, rows[0].neither) == (2, 0, 1, 1)
    assert rows[0].agreement == 1.0 and rows[0].coverage == 0.5
    # rule 1: chosen-only in pair 2; rejected-only in pairs 1 and 3; both in pair 0
    assert (rows[1].agree, rows[1].disagree, rows[1].both, rows[1].neither) == (1, 2, 1, 0)
    assert rows[1].agreement == pytest.approx(1 / 3) and rows[1].coverage == 0.75
    # rule 2: chosen-only in pairs 1 and 3; both in pair 2; neither in pair 0
    assert (rows[2].agree, rows[2].disagree) == (2, 0) and rows[2].agreement == 1.0


def test_overall_agreement_counts_ties_half():
    found = overall(CHOSEN, REJECTED)
    # satisfied shares, chosen vs rejected: 2/3 vs 1/3, 2/3 vs 2/3, 1 vs 1/3, 1/3 vs 1/3
    assert (found["agree"], found["disagree"], found["ties"]) == (2, 0, 2)
    assert found["overall_agreement"] == pytest.approx((2 + 0.5 * 2) / 4)


def test_prune_keeps_rules_at_or_above_the_rate_and_drops_undecided_ones():
    rows = per_rule(
        RULES + ["never differs"], np.c_[CHOSEN, np.ones(4)], np.c_[REJECTED, np.ones(4)]
    )
    kept, dropped = prune(rows, 0.5)
    assert kept == ["answers the question", "is polite"]
    assert dropped == ["uses steps", "never differs"]


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="pairs, rules"):
        per_rule(RULES[:2], CHOSEN, REJECTED)


class StandInJudge:
    """The RuleJudge API (judge(prompts=, responses=, rules=) -> .decisions, .unparsed) with
    verdicts from a literal table keyed by response text."""

    def __init__(self, table):
        self.table, self.calls, self.closed = table, [], False

    def judge(self, prompts, responses, rules):
        self.calls.append((list(prompts), list(responses), list(rules)))
        decisions = np.array([self.table[r] for r in responses], dtype=bool)
        return SimpleNamespace(probs=decisions.astype(float), decisions=decisions, unparsed=1)

    def close(self):
        self.closed = True


def test_the_stage_asks_the_rule_judge_about_chosen_and_rejected(tmp_path, monkeypatch):
    pd.DataFrame(
        {
            "prompt": [f"q{i}" for i in range(4)],
            "chosen_content": [f"good {i}" for i in range(4)],
            "rejected_content": [f"bad {i}" for i in range(4)],
        }
    ).to_parquet(tmp_path / "test_prefs.parquet")
    table = {f"good {i}": CHOSEN[i].tolist() for i in range(4)}
    table |= {f"bad {i}": REJECTED[i].tolist() for i in range(4)}
    judge = StandInJudge(table)
    monkeypatch.setattr(evaluate, "build_rule_judge", lambda cfg: judge)
    cfg = SimpleNamespace(
        evaluate=SimpleNamespace(agreement_split="test_prefs", agreement_pairs=None)
    )
    found = evaluate.rule_agreement(cfg, tmp_path, RULES)
    assert judge.calls[0] == ([f"q{i}" for i in range(4)], [f"good {i}" for i in range(4)], RULES)
    assert judge.calls[1][1] == [f"bad {i}" for i in range(4)] and judge.closed
    assert found["overall"]["overall_agreement"] == pytest.approx(0.75)
    assert [r["agree"] for r in found["rules"]] == [2, 1, 2]
    assert found["unparsed"] == 2 and found["verdicts"] == 24

    pruned = evaluate.write_pruned(tmp_path, found, 0.5)
    written = json.loads((tmp_path / "pruned_rules.json").read_text())
    assert written["rules"] == pruned["kept"] == ["answers the question", "is polite"]
    from autorule.rules.ruleset import read_rules_file

    assert (
        read_rules_file(tmp_path / "pruned_rules.json") == written["rules"]
    )  # rules.path reads it
    with pytest.raises(ValueError, match="keeps no rule"):
        evaluate.write_pruned(tmp_path, found, 1.01)
