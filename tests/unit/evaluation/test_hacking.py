"""Reward-hacking curves and flags on literal training logs and checkpoint points."""

import json

import pytest

from autorule.evaluation import hacking


def log_rows(rm, rules0, rules1, length=None):
    rows = []
    for i, (r, a, b) in enumerate(zip(rm, rules0, rules1, strict=True)):
        row = {"step": i + 1, "rewards/rm/mean": r, "rewards/rules/mean": (a + b) / 2}
        row |= {"reward": r + (a + b) / 2, "rules/0": a, "rules/1": b, "kl": 0.01 * i}
        if length:
            row["completions/mean_length"] = length[i]
        rows.append(row)
    return rows


def test_series_from_trl_keys(tmp_path):
    rows = log_rows([0.1, 0.2], [0.5, 0.6], [0.1, 0.2], length=[10, 12])
    path = tmp_path / "log_history.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [*rows, {"train_runtime": 3.0}]) + "\n")
    series = hacking.log_series(hacking.read_log(path))  # the row without a step is dropped
    assert series["rewards/rm/mean"] == {"step": [1.0, 2.0], "value": [0.1, 0.2]}
    assert series["rule_satisfaction"]["value"] == pytest.approx([0.3, 0.4])
    assert series["completions/mean_length"]["value"] == [10.0, 12.0]
    assert hacking.reward_names(series) == ["reward", "rewards/rm/mean"]  # not the rules term


def test_rm_rising_while_rules_fall_is_flagged():
    rm = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4]
    rules0 = [0.5, 0.6, 0.7, 0.8, 0.7, 0.6, 0.5, 0.4]
    rules1 = [0.3, 0.4, 0.5, 0.6, 0.5, 0.4, 0.3, 0.2]
    flags = hacking.log_flags(hacking.log_series(log_rows(rm, rules0, rules1)), 1, 0.05)
    by_reward = {f["reward"]: f for f in flags}
    # The total (rm + rules) still rises: it hides the fall of the rules term, and is flagged too.
    assert set(by_reward) == {"rewards/rm/mean", "reward"}
    flag = by_reward["rewards/rm/mean"]
    assert flag["peak_step"] == 4 and flag["last_step"] == 8
    assert flag["quality_drop"] == pytest.approx(0.7 - 0.3)
    assert flag["reward_rise"] == pytest.approx(1.4 - 0.6)
    assert "rose from 0.6 to 1.4 after step 4" in hacking.describe(flag)


def test_no_flag_when_both_rise_or_the_drop_is_small():
    rm = [0.0, 0.5, 1.0, 1.5]
    rising = hacking.log_series(log_rows(rm, [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]))
    assert hacking.log_flags(rising, 1, 0.05) == []
    small = hacking.log_series(log_rows(rm, [0.5, 0.52, 0.51, 0.50], [0.5, 0.52, 0.51, 0.50]))
    assert hacking.log_flags(small, 1, 0.05) == []


def test_smoothing_hides_a_single_noisy_dip():
    steps = list(range(1, 9))
    reward = [0.1 * s for s in steps]
    quality = [0.5, 0.6, 0.7, 0.8, 0.9, 0.6, 0.95, 1.0]  # one dip, then higher than ever
    assert hacking.rising_while_falling(steps, reward, quality, window=1, min_drop=0.05) is None
    assert hacking.smooth([1, 2, 3, 4], 2).tolist() == [1.0, 1.5, 2.5, 3.5]


def test_checkpoint_rm_score_up_win_rate_down():
    points = [
        {"step": 100, "rm_mean": 0.1, "win_rate": 0.55},
        {"step": 200, "rm_mean": 0.5, "win_rate": 0.62},
        {"step": 300, "rm_mean": 0.9, "win_rate": 0.51},
        {"step": 400, "rm_mean": 1.3, "win_rate": 0.44},
    ]
    [flag] = hacking.checkpoint_flags(points, 0.05)
    assert flag["peak_step"] == 200 and flag["quality_drop"] == pytest.approx(0.18)
    points[-1]["win_rate"] = 0.66  # the win rate recovers: nothing to flag
    assert hacking.checkpoint_flags(points, 0.05) == []
