"""The reward server's score log on literal rows: a batch's row, the job's window, rollouts of
completion-weighted means with the last partial one kept, and the session files."""

import json
import math

import pytest

from autorule.core.identity import is_run_record
from autorule.rewards import score_log
from autorule.rewards.score_log import (
    SessionLog,
    batch_row,
    in_window,
    merged_usage,
    read_sessions,
    rollouts,
)


def row(time, completions, reward, rules0=None, **more):
    out = {"time": time, "completions": completions, "reward": reward}
    if rules0 is not None:
        out["rules/0"] = rules0
    return {**out, **more}


def test_a_batch_row_holds_its_size_and_the_means_under_trls_keys():
    extra = {
        "rules": [1.0, 0.0, 0.5, 0.5],
        "rules/0": [1.0, 0.0, 1.0, 0.0],
        "judge/failed": [0.25] * 4,
        "length_penalty": [float("nan"), -1.0, -2.0, -3.0],  # a NaN value is left out
    }
    got = batch_row([1.0, float("inf"), 2.0, 1.0], extra, ["rules", "length_penalty"], now=7.5)
    assert got == {
        "time": 7.5,
        "completions": 4,
        "reward": 1.0,  # the infinite reward counts 0, as the client is answered
        "rewards/rules/mean": 0.5,
        "rules/0": 0.5,
        "judge/failed": 0.25,
        "rewards/length_penalty/mean": -2.0,
    }
    assert batch_row([math.nan], {}, [], now=0)["reward"] == 0.0


def test_the_window_keeps_the_rows_scored_while_the_job_ran():
    rows = [row(t, 1, 0.0) for t in (9.0, 10.0, 15.0, 20.0, 20.5)]
    assert [r["time"] for r in in_window(rows, 10.0, 20.0)] == [10.0, 15.0, 20.0]
    assert in_window(rows, 30.0, 40.0) == []


def test_rollouts_are_completion_weighted_and_the_last_partial_one_is_kept_and_marked():
    rows = [
        row(1, 12, 1.0, rules0=1.0),
        row(2, 4, 3.0, rules0=0.0),  # rollout 1: 16 completions
        row(3, 8, 0.0, rules0=0.5, **{"judge/failed": 0.5}),
        row(4, 8, 2.0, rules0=0.5),  # rollout 2: judge/failed only in its first row
        row(5, 6, 4.0),  # a job that ended mid-rollout
    ]
    got = rollouts(rows, 16)
    assert got == [
        {"step": 1, "completions": 16, "reward": 1.5, "rules/0": 0.75},
        {"step": 2, "completions": 16, "reward": 1.0, "rules/0": 0.5, "judge/failed": 0.5},
        {"step": 3, "completions": 6, "reward": 4.0, "partial": True},
    ]


def test_a_batch_is_never_split_and_the_session_key_is_not_averaged():
    rows = [row(1, 10, 1.0, session="a"), row(2, 10, 0.0, session="a"), row(3, 16, 5.0)]
    got = rollouts(rows, 16)
    # The second batch crosses 16: it is counted whole in the first rollout.
    assert got == [
        {"step": 1, "completions": 20, "reward": 0.5},
        {"step": 2, "completions": 16, "reward": 5.0},
    ]
    assert rollouts([], 16) == []
    with pytest.raises(ValueError):
        rollouts(rows, 0)


def test_usage_of_several_sessions_adds_counts_and_drops_latencies():
    one = {"calls": 4, "cost_usd": 0.5, "input_tokens": 10, "latency_p50_s": 1.0}
    two = {"calls": 6, "cost_usd": None, "input_tokens": 5, "latency_p50_s": 2.0}
    assert merged_usage([{"judge.llm": one}]) == {"judge.llm": one}
    assert merged_usage([{"judge.llm": one}, {"judge.llm": two}]) == {
        "judge.llm": {"calls": 10, "cost_usd": None, "input_tokens": 15, "latency_p50_s": None}
    }


class FakeLLM:
    price: dict = {}

    def __init__(self):
        from autorule.llm.base import Usage

        self.usage = Usage()


def test_a_session_flushes_each_row_and_writes_usage_into_the_run_records(tmp_path):
    llm = FakeLLM()
    session = SessionLog(tmp_path, ["rules"], {"judge.llm": llm}, usage_every_s=3600)
    session.add([1.0, 0.0], {"rules": [1.0, 0.0]})
    # Readable before the server stops: a killed server leaves what it logged.
    [logged] = read_sessions(tmp_path)
    assert logged["completions"] == 2 and logged["rewards/rules/mean"] == 0.5
    assert logged["session"] == session.folder.name
    llm.usage.calls = 3
    session.close()
    usage = json.loads((session.folder / "llm_usage.json").read_text())
    assert usage["judge.llm"]["calls"] == 3  # the last record is written on stop
    assert score_log.session_usage(tmp_path, [session.folder.name])["judge.llm"]["calls"] == 3
    session.add([1.0], {})  # a batch finished after the stop is not logged
    with open(session.folder / score_log.SCORES_FILE, "a") as f:
        f.write('{"time": 9, "compl')  # a line cut short by a kill
    assert len(read_sessions(tmp_path)) == 1
    # Files under sessions/ are run records: outside every content hash.
    relpath = session.folder.relative_to(tmp_path).as_posix()
    assert is_run_record(f"{relpath}/{score_log.SCORES_FILE}")
    assert is_run_record(f"{relpath}/llm_usage.json")
    assert score_log.sessions(tmp_path) == [session.folder.name]
    # Another session of the same process in the same second gets a folder of its own.
    again = SessionLog(tmp_path, ["rules"])
    again.close()
    assert again.folder != session.folder and len(score_log.sessions(tmp_path)) == 2
