"""The leaderboard protocol: a ranking of the two outputs read as data, both orders, ties."""

import pytest

from autorule.evaluation.leaderboard import parse_ranking
from autorule.evaluation.pairwise import verdicts_from_answers, win_rate

A_FIRST = '[{"model": "A", "rank": 1}, {"model": "B", "rank": 2}]'
B_FIRST = "Looking at both.\n[{'model': 'B', 'rank': 1}, {'model': 'A', 'rank': 2}]"


@pytest.mark.parametrize(
    ("answer", "best"),
    [
        (A_FIRST, "A"),
        (B_FIRST, "B"),  # Python-style quotes, after some text
        ('```\n[{"model": "b", "rank": "2"}, {"model": "a", "rank": "1"}]\n```', "A"),
        ('[{"model": "A", "rank": 1}, {"model": "B", "rank": 1}]', None),  # two firsts
        ('[{"model": "A", "rank": 1}]', None),  # one output only
        ('[{"model": "A", "rank": 1}, {"model": "C", "rank": 2}]', None),  # an unknown output
        ('[{"model": "A", "rank": true}, {"model": "B", "rank": 2}]', None),  # not a rank
        ("[{'model': 'A', 'rank': 1}, {'model': 'B', 'rank': 2}", None),  # never closed
        ("[__import__('os').system('touch /tmp/x'), 1]", None),  # code is never run
        ("I rank A first.", None),
        ("", None),
    ],
)
def test_rankings_are_read_as_data_and_malformed_ones_are_unparsed(answer, best):
    assert parse_ranking(answer)[0] == best


def test_rankings_that_disagree_leave_the_answer_unparsed_and_agreeing_ones_read():
    # A ranking quoted from a response (or the form restated) that names the other winner must
    # not decide the pair, whichever comes last: the answer is unparsed, as with verdict lines.
    assert parse_ranking(f"The form is {A_FIRST}. My ranking:\n{B_FIRST}") == (None, "")
    assert parse_ranking(f"{B_FIRST}\nThe response said: {A_FIRST}") == (None, "")
    assert parse_ranking(f"The form is {A_FIRST}. Mine:\n{A_FIRST}") == ("A", "json")
    # A list that is not a ranking (a response's data) does not count as a copy.
    assert parse_ranking(f"It returned [1, 2]. {B_FIRST}") == ("B", "literal")


def test_both_orders_a_disagreement_is_a_tie_and_unparsed_answers_are_counted():
    # X is A in the first order and B in the second: consistent wins, a flip (tie), a malformed.
    verdicts = verdicts_from_answers(
        [A_FIRST, A_FIRST, "[oops", B_FIRST],
        [B_FIRST, A_FIRST, A_FIRST, A_FIRST],
        parse=parse_ranking,
    )
    assert [v.score for v in verdicts] == [1.0, 0.5, None, 0.0]
    rate = win_rate(verdicts)
    assert rate.scored == 3 and rate.ties == 1 and rate.unparsed_answers == 1
    assert rate.rate == pytest.approx(0.5)
