"""The preprocess filter and the MT-Bench question split, on literal inputs."""

import pytest

from autorule.data.filters import (
    REASONS,
    FilterSettings,
    cheap_reason,
    filter_rows,
    format_prompt,
    length_reason,
    mt_question_split,
)


def words(texts):
    """A stand-in tokenizer: one token per whitespace-separated word."""
    return [len(t.split()) for t in texts]


def w(n):
    return " ".join(["x"] * n)


S = FilterSettings()


@pytest.mark.parametrize(
    ("sc", "sr", "chosen", "rejected", "reason"),
    [
        (8, 3, "fine", "bad", None),
        (5, 5, "fine", "bad", "score"),  # equal scores are dropped: chosen must be strictly better
        (3, 8, "fine", "bad", "score"),
        (8, 3, "Confidence: 90%", "bad", "confidence"),
        (8, 3, "fine", "my CONFIDENCE is low", "confidence"),
        (8, 3, "overconfidence", "bad", "confidence"),  # substring match, as the paper's filter
        (5, 5, "Confidence", "bad", "score"),  # first reason wins
    ],
)
def test_cheap_reason(sc, sr, chosen, rejected, reason):
    assert cheap_reason(sc, sr, chosen, rejected, S) == reason


@pytest.mark.parametrize(
    ("p", "c", "r", "reason"),
    [
        (511, 511, 511, None),
        (512, 10, 10, "prompt_length"),  # exactly 512 is not "under 512"
        (10, 512, 10, "chosen_length"),
        (10, 10, 512, "rejected_length"),
        (513, 513, 513, "prompt_length"),
    ],
)
def test_length_reason_boundaries(p, c, r, reason):
    assert length_reason(p, c, r, S) == reason


def test_switches_turn_conditions_off():
    off = FilterSettings(length=False, score=False, no_confidence=False)
    assert cheap_reason(1, 9, "Confidence", "confidence", off) is None
    assert length_reason(10_000, 10_000, 10_000, off) is None
    assert length_reason(300, 10, 10, FilterSettings(max_tokens=300)) == "prompt_length"


def test_filter_rows_counts_each_reason_once():
    rows = [  # prompt, chosen, rejected, score_chosen, score_rejected
        (w(3), w(3), w(3), 9, 1),  # kept
        (w(3), w(3), w(3), 4, 4),  # score (tie)
        (w(3), "Confidence high", w(3), 9, 1),  # confidence
        (w(512), w(3), w(3), 9, 1),  # prompt length
        (w(3), w(600), w(3), 9, 1),  # chosen length
        (w(3), w(3), w(512), 9, 1),  # rejected length
        (w(511), w(511), w(511), 9, 1),  # kept at the boundary
    ]
    cols = list(zip(*rows, strict=True))
    calls = []

    def count(texts):
        calls.append(len(texts))
        return words(texts)

    keep, dropped = filter_rows(*cols, count_tokens=count, s=S)
    assert keep == [0, 6]
    assert dropped == {
        "score": 1,
        "confidence": 1,
        "prompt_length": 1,
        "chosen_length": 1,
        "rejected_length": 1,
    }
    assert set(dropped) == set(REASONS)
    # Only the 5 rows that pass the cheap checks have their prompt tokenized, only the 4 whose
    # prompt is short their chosen answer, only the 3 whose chosen answer is short their rejected.
    assert calls == [5, 4, 3]


def test_mt_split_default():
    train, test = mt_question_split()
    assert train[:5] == [81, 82, 83, 84, 85] and test[:5] == [86, 87, 88, 89, 90]
    assert train[-5:] == [151, 152, 153, 154, 155] and test[-5:] == [156, 157, 158, 159, 160]
    assert len(train) == len(test) == 40
    assert not set(train) & set(test)


def test_mt_split_reproduces_released_range_bug():
    train, test = mt_question_split(first_question_only=True)
    assert train == [81, 91, 101, 111, 121, 131, 141, 151]
    assert test == [86, 96, 106, 116, 126, 136, 146, 156]  # the test loader has the same bug


def test_mt_split_rejects_bad_block():
    with pytest.raises(ValueError, match="train_per_block"):
        mt_question_split(train_per_block=10)


def test_format_prompt_plain():
    assert format_prompt("Hi {there}", "<|user|>{prompt}<|assistant|>") == (
        "<|user|>Hi {there}<|assistant|>"
    )
