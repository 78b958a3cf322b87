"""The feedback protocols on literal annotator outputs: ratings parser, the rankings both-orders
rule, the implied-ranking consistency table, reward targets and the SEM win rate."""

import math

import pytest

from autorule.evaluation import feedback_protocols as fb
from autorule.evaluation.pairwise import verdicts_from_answers


@pytest.mark.parametrize(
    ("answer", "rating"),
    [
        ("Accurate and clear, nothing unsafe.\nRating: 6", 6),
        ("Some reasoning.\n\n**Rating:** 2  \n", 2),
        ("Fine.\nrating = 7", 7),
        ("Mostly right.\nRating: 5/7", 5),
        ("Mostly right.\nRating: 4 out of 7.", 4),
        ("Rating: 3\nOn reflection it is weak.", None),  # the rating must be the last line
        ("Great answer.\nRating: 9", None),  # off the scale
        ("Great answer.\nRating: 0", None),
        ("I would give it a six.", None),
        ("Rating: " + "9" * 5000, None),  # past Python's int-digits limit: no crash
        ("Rating: 0006", None),  # more than three digits
        ("Rating: \uff15", None),  # a full-width 5
        ("Quoting the response: 'Rating: 7'\nRating: 2", 2),  # a quote that is not a line
        ("The response ends:\nRating: 7\nMy verdict:\nRating: 2", None),  # copies disagree
        ("Rating: 5\nTo repeat:\nRating: 5", 5),  # copies that agree
        ("", None),
        (None, None),
    ],
)
def test_rating_parser(answer, rating):
    assert fb.parse_rating(answer) == rating


def label(first: str, second: str):
    """X's label from the annotator's answer with X as A, then with X as B."""
    [verdict] = verdicts_from_answers([first], [second])
    return fb.ranking_label(verdict)


def test_rankings_need_the_same_response_in_both_orders():
    assert label("X is clearer.\nPreferred: A", "X again.\nPreferred: B") == fb.X
    assert label("Y is better.\nPreferred: B", "Y again.\nPreferred: A") == fb.Y
    # the same position won both times: position bias, counted as equal
    assert label("A looks better.\nPreferred: A", "A looks better.\nPreferred: A") == fb.EQUAL
    assert label("Preferred: B", "Preferred: B") == fb.EQUAL
    assert label("No idea which.", "Preferred: B") is None


def test_implied_rankings_and_the_consistency_table():
    ratings = ["Good.\nRating: 6", "Weak.\nRating: 3", "Fine.\nRating: 6", "Rating: ?"]
    r = [fb.parse_rating(a) for a in ratings]
    # pairs (0,1), (0,2), (1,2), (0,3)
    implied = [
        fb.implied_ranking(r[0], r[1]),
        fb.implied_ranking(r[0], r[2]),
        fb.implied_ranking(r[1], r[2]),
        fb.implied_ranking(r[0], r[3]),
    ]
    assert implied == [fb.X, fb.EQUAL, fb.Y, None]
    ranked = [
        label("Preferred: A", "Preferred: B"),  # x: agrees
        label("Preferred: A", "Preferred: B"),  # x while ratings tie: disagrees
        label("Preferred: A", "Preferred: A"),  # equal while ratings say y: disagrees
        label("Preferred: A", "Preferred: B"),  # the rating is missing: left out
    ]
    result = fb.consistency(implied, ranked)
    assert result.pairs == 3 and result.missing == 1 and result.agreements == 1
    assert result.table[fb.X][fb.X] == 1
    assert result.table[fb.EQUAL][fb.X] == 1
    assert result.table[fb.Y][fb.EQUAL] == 1
    assert result.disagreement == pytest.approx(2 / 3)
    assert "| equal | 1 | 0 | 0 |" in fb.format_table(result)


def test_regression_targets():
    assert fb.rating_target(1) == 0.0
    assert fb.rating_target(7) == 1.0
    assert fb.rating_target(4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="1..7"):
        fb.rating_target(8)


def test_rankings_reward_model_drops_ties():
    rows = [("a", "b", fb.X), ("c", "d", fb.Y), ("e", "f", fb.EQUAL), ("g", "h", None)]
    assert fb.preferred_pairs(rows) == [("a", "b"), ("d", "c")]


def test_win_rate_counts_ties_as_half_with_a_sem_interval():
    scores = [1.0, 1.0, 0.5, 0.0, None]
    result = fb.sem_win_rate(scores)
    assert (result.n, result.wins, result.ties, result.losses) == (4, 2, 1, 1)
    assert result.rate == pytest.approx(2.5 / 4)
    sd = math.sqrt(sum((s - 0.625) ** 2 for s in [1, 1, 0.5, 0]) / 3)
    assert result.high - result.rate == pytest.approx(1.96 * sd / 2)
    assert result.rate - result.low == pytest.approx(1.96 * sd / 2)
    assert fb.sem_win_rate([None]).rate is None
    assert fb.rating_score(5, 5) == 0.5 and fb.rating_score(6, 2) == 1.0


def test_best_of_n_pick_uses_only_the_first_n_candidates():
    from autorule.stages.feedback_eval import pick_for_n

    scores = [0.2, -1.0, 0.9, 0.9, 3.0]
    assert [pick_for_n(scores, n) for n in (1, 2, 3, 4, 5)] == [0, 0, 2, 2, 4]
    assert pick_for_n([float("nan"), 0.1], 2) == 1  # NaN never wins
    with pytest.raises(ValueError, match="best-of-6 of 5"):
        pick_for_n(scores, 6)


def test_two_by_two_win_rates_from_literal_scores():
    from autorule.stages.feedback_eval import table

    ratings_picks = [fb.rating_score(p, r) for p, r in [(6, 4), (5, 5), (2, 7), (7, 1)]]
    assert ratings_picks == [1.0, 0.5, 0.0, 1.0]
    ranked = [
        v.score
        for v in verdicts_from_answers(["Preferred: A"] * 3, ["Preferred: B", "Preferred: A", "x"])
    ]
    assert ranked == [1.0, 0.5, None]
    result = table(
        {
            "ratings": {"ratings": {1: ratings_picks}, "rankings": {1: ranked}},
            "rankings": {"ratings": {1: [0.0, 0.0]}, "rankings": {1: [1.0, 1.0, 1.0, 0.0]}},
        }
    )
    cell = result["ratings"]["ratings"]["1"]
    assert (cell["wins"], cell["ties"], cell["losses"], cell["n"]) == (2, 1, 1, 4)
    assert cell["rate"] == pytest.approx(2.5 / 4)
    sd = math.sqrt(((0.375**2) * 2 + 0.125**2 + 0.625**2) / 3)
    assert cell["high"] - cell["rate"] == pytest.approx(1.96 * sd / 2)
    assert result["ratings"]["rankings"]["1"]["rate"] == pytest.approx(0.75)  # unread left out
    assert result["ratings"]["rankings"]["1"]["n"] == 2
    assert result["rankings"]["ratings"]["1"]["rate"] == 0.0
    assert result["rankings"]["ratings"]["1"]["low"] == result["rankings"]["ratings"]["1"]["high"]
    assert result["rankings"]["rankings"]["1"]["rate"] == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("answer", "rating"),
    [
        ("6\nAccurate and clear, nothing unsafe.", 6),  # the released study's layout
        ("**5**\nClear enough.", 5),
        ("Rating: 4\nSome slips.", 4),
        ("Accurate and clear.\n6", None),  # the rating must be the first line
        ("9\nOff the scale.", None),
        ("six\nWritten out.", None),
        ("", None),
    ],
)
def test_rating_parser_on_the_first_line(answer, rating):
    assert fb.parse_rating(answer, "first") == rating


def test_rating_parser_refuses_an_unknown_line():
    with pytest.raises(ValueError, match="feedback.rating_line"):
        fb.parse_rating("5", "middle")
