"""The oracle's labels: every pair judged in both orders by a scripted judge; a pair is labelled
only when the orders agree, ties and unread answers are dropped and counted."""

import re

from autorule.evaluation.annotators import LLMAnnotator
from autorule.llm.base import Completion
from autorule.stages import oracle

TEMPLATE = "Q: {instruction}\nA: {response_a}\nB: {response_b}\nWhich?"


class ScriptedJudge:
    """Prefers the answer with more 'good' in it; on the prompt 'tie?' always says A (position
    bias, a tie); on 'mute?' writes no verdict. Records every request."""

    backend, model = "scripted", "judge"

    def __init__(self):
        self.requests = []

    def complete_all(self, requests, desc=""):
        out = []
        for messages in requests:
            text = messages[-1]["content"]
            self.requests.append(text)
            q, a, b = re.match(r"Q: (.*)\nA: (.*)\nB: (.*)\nWhich\?", text, re.S).groups()
            if q == "tie?":
                answer = "Preferred: A"
            elif q == "mute?":
                answer = "I cannot decide."
            else:
                answer = "Preferred: " + ("A" if a.count("good") > b.count("good") else "B")
            out.append(Completion(text=answer))
        return out


def test_pairs_are_judged_in_both_orders_and_ties_dropped_and_counted():
    groups = [
        {"id": "p1", "prompt": "best?", "answers": ["good good", "good", "meh"]},
        {"id": "p2", "prompt": "tie?", "answers": ["good", "bad"]},
        {"id": "p3", "prompt": "mute?", "answers": ["good", "bad"]},
        {"id": "p4", "prompt": "same?", "answers": ["x", "x"]},
    ]
    pairs, identical = oracle.answer_pairs(groups)
    assert identical == 1 and len(pairs) == 5  # three pairs of p1, one each of p2 and p3
    judge = ScriptedJudge()
    judged = LLMAnnotator(judge, "", TEMPLATE).rank(
        [p["prompt"] for p in pairs], [p["x"] for p in pairs], [p["y"] for p in pairs]
    )
    assert len(judge.requests) == 10  # both orders of each pair
    assert "A: good good\nB: good\n" in judge.requests[0]
    assert "A: good\nB: good good\n" in judge.requests[5]

    table, labels, counts = oracle.label_pairs(pairs, judged)
    assert counts == {"pairs": 5, "labelled": 3, "ties": 1, "unparsed": 1, "failed_calls": 0}
    assert list(zip(table["chosen_content"], table["rejected_content"], strict=True)) == [
        ("good good", "good"),
        ("good good", "meh"),
        ("good", "meh"),
    ]
    assert labels["label"].tolist() == ["x", "x", "x", "tie", "unparsed"]
    assert table["chosen"][0][-1] == {"content": "good good", "role": "assistant"}
