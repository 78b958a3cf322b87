"""Reward-model score statistics on literal inputs."""

import math

import pytest

from autorule.training import rm_metrics


def test_pairwise_accuracy_counts_strict_wins_only():
    assert rm_metrics.pairwise_accuracy([2.0, 1.0, 0.5, 3.0], [1.0, 1.0, 0.7, -1.0]) == 0.5


def test_mean_std_is_population_std():
    mean, std = rm_metrics.mean_std([1.0, 3.0])
    assert (mean, std) == (2.0, 1.0)
    assert rm_metrics.mean_std([4.0]) == (4.0, 0.0)


def test_summarize_pools_chosen_and_rejected():
    out = rm_metrics.summarize([3.0, 1.0], [1.0, -1.0])
    assert out["accuracy"] == 1.0
    assert out["reward_mean"] == 1.0
    assert math.isclose(out["reward_std"], math.sqrt(2.0))
    assert out["margin_mean"] == 2.0
    assert out["scored_pairs"] == 2


@pytest.mark.parametrize("chosen, rejected", [([1.0], [1.0, 2.0]), ([], [])])
def test_bad_pairs_raise(chosen, rejected):
    with pytest.raises(ValueError):
        rm_metrics.summarize(chosen, rejected)
