"""Sampling the pairs shown to the reasoner, and filling the prompt templates."""

import pandas as pd
import pytest

from autorule.data.pairs import mt_pairs, uf_pairs
from autorule.rules.prompts import fill, render_conversation


def conv(prompt, answer):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


@pytest.fixture
def uf():
    return pd.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in range(40)],
            "chosen": [conv(f"q{i}", f"good{i}") for i in range(40)],
            "rejected": [conv(f"q{i}", f"bad{i}") for i in range(40)],
        }
    )


def test_uf_sampling_is_seeded_and_sides_are_random(uf):
    pairs = uf_pairs(uf, 20, seed=3, chosen_first=False)
    assert [p.pair_id for p in pairs] == [p.pair_id for p in uf_pairs(uf, 20, 3, False)]
    assert [p.row_ids for p in pairs] != [p.row_ids for p in uf_pairs(uf, 20, 4, False)]
    assert len({p.row_ids["prompt_id"] for p in pairs}) == 20
    assert {p.winner for p in pairs} == {"A", "B"}
    for p in pairs:
        winner = p.conversation_a if p.winner == "A" else p.conversation_b
        assert winner[-1]["content"].startswith("good")
    assert {p.winner for p in uf_pairs(uf, 20, 3, chosen_first=True)} == {"A"}
    assert len(uf_pairs(uf, 100, 0, False)) == 40  # capped at the rows available


def test_mt_sampling_per_question_and_turns():
    two_turns_a = conv("q1", "a1") + conv("q2", "a2")
    two_turns_b = conv("q1", "b1") + conv("q2", "b2")
    df = pd.DataFrame(
        {
            "question_id": [81, 81, 81, 82],
            "winner": ["model_a", "model_b", "model_a", "model_b"],
            "turn": [1, 2, 2, 1],
            "judge": ["j1", "j2", "j3", "j4"],
            "conversation_a": [two_turns_a] * 4,
            "conversation_b": [two_turns_b] * 4,
        }
    )
    pairs = mt_pairs(df, examples_per_question=2, seed=0, chosen_first=True)
    assert [p.row_ids["question_id"] for p in pairs] == [81, 81, 82]
    for p in pairs:
        assert len(p.conversation_a) == 2 * p.row_ids["turn"]  # only the turns that were judged
        expected = "a" if p.row_ids["winner"] == "model_a" else "b"
        assert p.winner == "A" and p.conversation_a[1]["content"].startswith(expected)
    assert len(mt_pairs(df, 8, 0, False, num_questions=1)) == 3
    # extract.mt_judged_turns_only=false: both turns, whatever turn was judged (released code).
    whole = mt_pairs(df, 2, 0, True, judged_turns_only=False)
    assert [p.row_ids["turn"] for p in whole] == [p.row_ids["turn"] for p in pairs]
    assert all(len(p.conversation_a) == len(p.conversation_b) == 4 for p in whole)


def test_fill_substitutes_only_named_placeholders():
    out = fill('Say {x} as ["json"] {y}', x="{y}", y="2")
    assert out == 'Say {y} as ["json"] 2'  # substituted text is not searched again
    with pytest.raises(ValueError, match="missing"):
        fill("no placeholder", "extract.prompts.reasoner", conversation_a="...")
    assert render_conversation(conv("hi", " yo ")) == "User:\nhi\n\nAssistant:\nyo"
