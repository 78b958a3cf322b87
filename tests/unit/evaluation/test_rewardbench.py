"""RewardBench-style accuracy: the sections, both weightings, and the bundled fixture's known
answers."""

import pandas as pd
import pytest

from autorule.core.config import REPO_ROOT
from autorule.data.synthetic import REWARD_BENCH_SUBSETS, make_reward_bench
from autorule.evaluation import rewardbench
from autorule.evaluation.rewardbench import (
    LEADERBOARD_WEIGHTS,
    SECTIONS,
    load_pairs,
    section_scores,
    side_by_side,
    summarize,
)

FIXTURE = REPO_ROOT / "data" / "reward_bench"


def test_sections_are_rewardbenchs_four_over_its_23_subsets():
    assert list(SECTIONS) == ["Chat", "Chat Hard", "Safety", "Reasoning"]
    subsets = [s for group in SECTIONS.values() for s in group]
    assert len(subsets) == len(set(subsets)) == 23 == len(LEADERBOARD_WEIGHTS)
    assert set(subsets) == set(LEADERBOARD_WEIGHTS)
    # The data layer spells the same mapping out (it may not import the training layer).
    assert {k: tuple(v) for k, v in REWARD_BENCH_SUBSETS.items()} == SECTIONS
    # math-prm weighs as much as the six code subsets together on the leaderboard.
    code = sum(LEADERBOARD_WEIGHTS[s] for s in SECTIONS["Reasoning"] if s.startswith("hep-"))
    assert LEADERBOARD_WEIGHTS["math-prm"] == code


def test_pooled_and_leaderboard_weightings_on_literal_counts():
    counts = {"math-prm": (1, 4), "hep-go": (3, 4), "alpacaeval-easy": (2, 2)}
    pooled = section_scores(counts, "pooled")
    assert pooled == {"Chat": 1.0, "Reasoning": 0.5}
    leaderboard = section_scores(counts, "leaderboard")
    assert leaderboard["Reasoning"] == pytest.approx((0.25 * 984 + 0.75 * 164) / (984 + 164))
    with pytest.raises(ValueError, match="weighting"):
        section_scores(counts, "mean")


def test_an_unknown_subset_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'anthropic_helpful' is in none"):
        summarize(["anthropic_helpful"], [1.0], [0.0])


def test_the_fixture_has_known_answers():
    """Scoring by length gets every pair right except in Chat Hard, where the chosen answer is
    the short one: sections 100, 0, 100, 100 and an average of 75, under either weighting."""
    pairs = load_pairs(str(FIXTURE))
    assert set(pairs["subset"]) == set(LEADERBOARD_WEIGHTS)
    assert pairs.groupby("subset").size().eq(2).all()
    chosen = pairs["chosen"].str.len().astype(float).tolist()
    rejected = pairs["rejected"].str.len().astype(float).tolist()
    for weighting in ("pooled", "leaderboard"):
        result = summarize(pairs["subset"].tolist(), chosen, rejected, weighting)
        assert result["sections"] == {"Chat": 1, "Chat Hard": 0, "Safety": 1, "Reasoning": 1}
        assert (
            result["average"] == 0.75 and result["missing_sections"] == [] and result["pairs"] == 46
        )
    flipped = summarize(pairs["subset"].tolist(), rejected, chosen)
    assert flipped["average"] == 0.25


def test_ties_count_as_wrong_and_missing_sections_are_named():
    result = summarize(["hep-go", "hep-go", "donotanswer"], [1.0, 2.0, 3.0], [1.0, 0.0, 0.0])
    assert result["sections"] == {"Safety": 1.0, "Reasoning": 0.5}
    assert result["average"] == 0.75 and result["missing_sections"] == ["Chat", "Chat Hard"]


def test_the_committed_fixture_is_what_the_generator_writes():
    committed = pd.read_parquet(FIXTURE / "data" / "filtered-00000-of-00001.parquet")
    pd.testing.assert_frame_equal(committed, make_reward_bench(seed=0))


def test_pairs_per_subset_and_a_bad_path(tmp_path):
    assert len(load_pairs(str(FIXTURE), pairs_per_subset=1)) == 23
    with pytest.raises(FileNotFoundError, match="cloud_eval.rewardbench.path"):
        load_pairs(str(tmp_path / "nowhere"))


def test_side_by_side_table():
    cloud = {"sections": {"Chat": 1.0, "Chat Hard": 0.5}, "average": 0.75}
    classic = {"sections": {"Chat": 0.5, "Chat Hard": 0.25}, "average": 0.375}
    table = side_by_side({"CLoud": cloud, "classic": classic}).splitlines()
    assert table[0] == "| section | CLoud | classic |"
    assert table[2] == "| Chat | 100.0 | 50.0 |"
    assert table[4] == "| Safety | n/a | n/a |"
    assert table[-1] == "| **average** | **75.0** | **37.5** |"
    assert rewardbench.WEIGHTINGS == ("pooled", "leaderboard")
