"""The reward server's pure parts: request parsing, response splitting, scoring and batching."""

import json
import threading

import numpy as np
import pytest

from autorule.rewards.server import (
    BadRequest,
    Batcher,
    parse_request,
    split_response,
    term_scorer,
)


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_a_well_formed_request_gives_its_queries_and_prompts():
    data = body(query=["pa", "qb"], prompts=["p", "q"], labels=[None, "x"])
    queries, prompts = parse_request(data, 8)
    assert (queries, prompts) == (["pa", "qb"], ["p", "q"])
    # Labels may be left out (or null) altogether.
    assert parse_request(body(query=["pa"], prompts=["p"]), 8) == (["pa"], ["p"])


@pytest.mark.parametrize(
    "data, status, message",
    [
        (b"\xff", 400, "not JSON"),
        (body(query=["a"], prompts=["a"], extra=1), 400, "unknown field(s) ['extra']"),
        (body(query=["a"]), 400, "missing field(s) ['prompts']"),
        (body(query=[], prompts=[]), 400, "'query' is an empty list"),
        (body(query=["a"], prompts=[None]), 400, "prompts[0] must be a string"),
        (body(query=["a", "b"], prompts=["a", "b"], labels=["x"]), 400, "2 queries but 1 labels"),
        (body(query=["a"] * 3, prompts=["a"] * 3), 413, "reward_server.max_batch=2"),
    ],
)
def test_bad_requests_are_refused_with_their_status(data, status, message):
    with pytest.raises(BadRequest) as caught:
        parse_request(data, max_queries=2)
    assert caught.value.status == status and message in str(caught.value)


def test_the_response_is_what_follows_the_prompt_without_trailing_special_tokens():
    query = "<pad><pad><|user|>Hi<|assistant|>Hello there<eos><pad><pad>"
    prompt = "<|user|>Hi<|assistant|>"
    assert split_response(query, prompt, ["<eos>", "<pad>"]) == "Hello there"
    # A special token inside the response is the response's own.
    assert split_response(prompt + "a<eos>b", prompt, ["<eos>"]) == "a<eos>b"
    # A prompt whose decoding lost the spaces before punctuation is found in that spelling.
    cleaned = "<|user|>Hi , you.<|assistant|>".replace(" ,", ",")
    query = cleaned + "Hey"
    assert split_response(query, "<|user|>Hi , you.<|assistant|>", [], variants=[cleaned]) == "Hey"
    with pytest.raises(BadRequest, match="query 3 does not hold its prompt"):
        split_response("something else", prompt, [], index=3)


def test_scores_are_the_weighted_sum_with_each_terms_values_and_per_rule_verdicts():
    def length(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    def rules(prompts, completions, per_rule=None, **kwargs):
        satisfied = np.array([[1.0, 0.0], [1.0, 1.0]])
        per_rule(satisfied)
        return satisfied.mean(axis=1).tolist()

    rules.metrics = lambda: {"judge/failed": 0.25}
    length.__name__, rules.__name__ = "length", "rules"
    rewards, extra = term_scorer([length, rules], [0.5, 2.0])(["p", "p"], ["ab", "abcd"])
    assert rewards == [0.5 * 2 + 2.0 * 0.5, 0.5 * 4 + 2.0 * 1.0]
    assert extra["length"] == [2.0, 4.0] and extra["rules"] == [0.5, 1.0]
    assert extra["rules/0"] == [1.0, 1.0] and extra["rules/1"] == [0.0, 1.0]
    assert extra["judge/failed"] == [0.25, 0.25]


def test_the_batcher_scores_waiting_requests_together_up_to_max_batch():
    calls = []
    started = threading.Event()
    release = threading.Event()

    def score(prompts, responses):
        calls.append(list(responses))
        started.set()
        release.wait(10)  # holds the first batch until the others wait in the queue
        return [float(len(r)) for r in responses], {"n": [1.0] * len(responses)}

    batcher = Batcher(score, wait_s=0.0, max_batch=3)
    results = {}

    def submit(name, responses):
        results[name] = batcher.submit(["p"] * len(responses), responses)

    first = threading.Thread(target=submit, args=("first", ["a"]))
    first.start()
    assert started.wait(10)
    others = [
        threading.Thread(target=submit, args=(name, responses))
        for name, responses in (("b", ["bb", "bbb"]), ("c", ["c"]), ("d", ["dddd"]))
    ]
    for waiting, thread in enumerate(others, start=1):
        thread.start()
        while len(batcher._queue) < waiting:  # queued in this order, behind the first batch
            threading.Event().wait(0.01)
    release.set()
    for thread in [first, *others]:
        thread.join(10)
    batcher.stop()
    # The three waiting requests (four responses) go in batches of at most three responses.
    assert calls == [["a"], ["bb", "bbb", "c"], ["dddd"]]
    assert results["b"] == ([2.0, 3.0], {"n": [1.0, 1.0]})
    assert results["c"] == ([1.0], {"n": [1.0]}) and results["d"] == ([4.0], {"n": [1.0]})


def test_a_failed_batch_raises_in_each_of_its_requests():
    batcher = Batcher(lambda prompts, responses: 1 / 0, wait_s=0.0, max_batch=8)
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        batcher.submit(["p"], ["r"])
    batcher.stop()


def test_a_resent_request_joins_the_scoring_under_way_and_failures_are_not_kept():
    import requests

    from autorule.rewards.server import RewardServer

    calls = []
    started, release = threading.Event(), threading.Event()

    def score(prompts, responses):
        calls.append(list(responses))
        started.set()
        release.wait(10)
        if responses == ["fail"]:
            raise ValueError("no")
        return [1.0] * len(responses), {}

    with RewardServer(score, wait_s=0.0, reuse_s=60) as server:
        good = {"query": ["p-answer"], "prompts": ["p-"]}
        answers = []
        first = threading.Thread(
            target=lambda: answers.append(requests.post(server.url(), json=good, timeout=30))
        )
        first.start()
        assert started.wait(10)
        # The client timed out and resends the same body while it is being scored.
        resent = threading.Thread(
            target=lambda: answers.append(requests.post(server.url(), json=good, timeout=30))
        )
        resent.start()
        while len(server._answers) != 1 or server.requests["ok"]:
            threading.Event().wait(0.01)
        release.set()
        first.join(10), resent.join(10)
        assert [a.json()["rewards"] for a in answers] == [[1.0], [1.0]]
        assert calls == [["answer"]] and server.requests["reused"] == 1  # scored once
        assert requests.post(server.url(), json=good, timeout=30).json()["rewards"] == [1.0]
        assert calls == [["answer"]] and server.requests["reused"] == 2  # and kept
        bad = {"query": ["p-fail"], "prompts": ["p-"]}
        assert requests.post(server.url(), json=bad, timeout=30).status_code == 500
        assert requests.post(server.url(), json=bad, timeout=30).status_code == 500
        assert calls[1:] == [["fail"], ["fail"]]  # a failure is scored again
