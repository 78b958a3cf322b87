"""The feedback study's annotators: the heuristic stand-in on literal texts, which annotator
``feedback.annotator`` picks, and what each one's settings move in the artifact hash."""

import pytest

from autorule.core.artifacts import config_hash
from autorule.core.config import ConfigError
from autorule.evaluation.annotators import (
    HeuristicAnnotator,
    annotator_kind,
    distinct_share,
    words,
)
from autorule.stages import feedback, feedback_eval


def test_words_and_distinct_share():
    assert words("Hello, world! (hello)") == ["hello", "world", "hello"]
    assert distinct_share("a b a b") == 0.5
    assert distinct_share("") == 0.0


@pytest.mark.parametrize(
    ("length", "rating"),
    [(0, 1), (1, 1), (4, 2), (10, 3), (20, 4), (33, 6), (40, 7), (400, 7)],
)
def test_heuristic_rating_grows_with_length_up_to_rating_words(length, rating):
    annotator = HeuristicAnnotator(rating_words=40, rank_margin=0.05)
    [rated] = annotator.rate(["q"], [" ".join(f"w{i}" for i in range(length))])
    assert rated.rating == rating  # 1 + round(6 * min(1, length / 40))
    assert rated.answer.endswith(f"Rating: {rating}")  # read back by the real parser
    assert not rated.failed and not rated.unparsed


def test_heuristic_ranking_in_both_orders_with_a_position_tie():
    annotator = HeuristicAnnotator(rating_words=40, rank_margin=0.05)
    varied = "one two three four"  # share 1.0
    repetitive = "one one one one"  # share 0.25
    close = " ".join([f"w{i}" for i in range(20)] + ["w0"])  # share 20/21, within 0.05 of 1.0
    judged = annotator.rank(["q"] * 3, [varied, repetitive, varied], [repetitive, varied, close])
    assert [j.verdict.score for j in judged] == [1.0, 0.0, 0.5]
    # the close pair: the response shown as A wins in both orders (position bias: "equal")
    assert judged[2].verdict.x_as_a == "A" and judged[2].verdict.x_as_b == "A"
    assert judged[0].answer_x_as_a.endswith("Preferred: A")
    assert judged[0].answer_x_as_b.endswith("Preferred: B")


def test_heuristic_settings_are_checked():
    with pytest.raises(ValueError, match="rating_words"):
        HeuristicAnnotator(rating_words=0, rank_margin=0.1)
    with pytest.raises(ValueError, match="rank_margin"):
        HeuristicAnnotator(rating_words=10, rank_margin=1.0)


SERVED = ("llm@feedback.llm=openai", "feedback.llm.model=served-annotator")


def test_auto_picks_the_stand_in_only_for_the_tiny_random_model(make_cfg):
    kind = annotator_kind
    assert kind(make_cfg()) == "heuristic"  # the tiny profile's role is the tiny model
    assert kind(make_cfg(*SERVED)) == "llm"
    assert kind(make_cfg("feedback.llm.model=/models/annotator")) == "llm"
    assert kind(make_cfg("feedback.annotator=llm")) == "llm"
    assert kind(make_cfg("feedback.annotator=heuristic", *SERVED)) == "heuristic"


def test_annotator_settings_are_refused_by_key(make_cfg):
    with pytest.raises(ConfigError, match="feedback.annotator"):
        feedback.check(make_cfg("feedback.annotator=crowd"))
    with pytest.raises(ConfigError, match="feedback.heuristic.rating_words"):
        feedback.check(make_cfg("feedback.heuristic.rating_words=0"))
    with pytest.raises(ConfigError, match="feedback.heuristic.rank_margin"):
        feedback_eval.check(make_cfg("feedback.heuristic.rank_margin=1.5"))
    # the LLM role's numbers are checked only when the LLM annotates
    feedback.check(make_cfg("feedback.llm.max_tokens=0"))
    with pytest.raises(ConfigError, match="feedback.llm.max_tokens"):
        feedback.check(make_cfg("feedback.annotator=llm", "feedback.llm.max_tokens=0"))


@pytest.mark.parametrize("stage", ["feedback", "feedback_eval"])
def test_only_the_annotator_in_use_decides_the_artifact(make_cfg, stage):
    def moved(*overrides, base=()):
        return config_hash(make_cfg(*base, *overrides), stage) != config_hash(
            make_cfg(*base), stage
        )

    # the stand-in: its own settings count, the LLM's and the templates do not
    assert moved("feedback.heuristic.rating_words=12")
    assert not moved("feedback.llm.temperature=0.7")
    assert not moved("feedback.rating_template='{instruction} {response} Rating?'")
    # an LLM: the other way round
    served = SERVED
    assert moved("feedback.llm.temperature=0.7", base=served)
    assert moved("feedback.rating_template='{instruction} {response} Rating?'", base=served)
    assert not moved("feedback.heuristic.rating_words=12", base=served)
    # forcing the tiny model to annotate is another artifact than the stand-in's
    assert moved("feedback.annotator=llm")


def test_the_sampling_of_the_answers_to_annotate_is_checked_up_front(make_cfg):
    """The samples are an input under a config of their own: the pipeline checks the generate
    stage under that config with the feedback stage, before any call is paid for."""
    from autorule.pipeline import check_stages

    cfg = make_cfg("feedback.source=generate", "generate.temperature=0")
    with pytest.raises(ConfigError, match="generate.best_of_n=5 needs sampling"):
        check_stages(cfg, ["feedback"])
    with pytest.raises(ConfigError, match="feedback.responses_per_instruction"):
        feedback.check(make_cfg("feedback.source=generate", "feedback.responses_per_instruction=1"))
