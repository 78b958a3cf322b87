"""Annotators: who gives the feedback study its ratings and rankings.

An annotator rates responses alone (:meth:`Annotator.rate`, an answer ending ``Rating: <1-7>``)
and compares two responses to one instruction in both orders (:meth:`Annotator.rank`, answers
ending ``Preferred: A|B``). Both the feedback stage (the study's feedback) and feedback_eval (the
best-of-N picks judged against a reference) ask through this one interface, so the two stages
can never read feedback differently.

* :class:`LLMAnnotator` — the real one: an LLM role (``feedback.llm``, any backend) fills the
  rating and ranking templates; rankings go through
  :func:`autorule.evaluation.pairwise.judge_pairs`.
* :class:`HeuristicAnnotator` — a deterministic stand-in computed from the text, with no model:
  for offline demos and smoke tests (``profile=tiny``), where a random local model never writes a
  readable verdict and the study would have nothing to train on. Its two protocols weigh
  *different* things on purpose (ratings: length; rankings: the share of distinct words), so
  ratings and rankings disagree on some pairs, as real annotators' do, and every later step of the
  study (both reward models, best-of-N, the 2x2) has feedback to work with. Its numbers say
  nothing about any model; reports name it.

Both write their verdicts as text and read them back with the same parsers
(:func:`autorule.evaluation.feedback_protocols.parse_rating`,
:func:`autorule.evaluation.pairwise.parse_preference`), so one code path turns answers into
feedback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autorule.evaluation.feedback_protocols import (
    RATING_LINES,
    RATING_MAX,
    RATING_MIN,
    parse_rating,
)
from autorule.evaluation.pairwise import PairJudgment, judge_pairs, verdicts_from_answers
from autorule.rules.prompts import fill, user

log = logging.getLogger(__name__)

ANNOTATORS = ("auto", "llm", "heuristic")  # feedback.annotator


@dataclass
class Rated:
    """One response's rating as the annotator gave it."""

    answer: str | None  # the annotator's text; None when the call failed for good
    rating: int | None  # the parsed 1-7 rating; None when failed or unreadable

    @property
    def failed(self) -> bool:
        return self.answer is None

    @property
    def unparsed(self) -> bool:
        return self.answer is not None and self.rating is None


def rated(answers: Sequence[str | None], line: str = "last") -> list[Rated]:
    """Ratings read from annotator answers (None: a failed call), on their ``line``
    (:func:`~autorule.evaluation.feedback_protocols.parse_rating`)."""
    return [Rated(a, parse_rating(a, line) if a is not None else None) for a in answers]


def resolve_kind(kind: str, model: object) -> str:
    """``llm`` or ``heuristic`` for an annotator setting (``feedback.annotator``,
    ``oracle.annotator``): ``auto`` means the heuristic stand-in when the role's model is the tiny
    random model (it never writes a readable verdict, so nothing would be learnt), the LLM
    otherwise."""
    from autorule.data.models import TINY

    if kind != "auto":
        return kind
    return "heuristic" if model == TINY else "llm"


class Annotator:
    """Rates responses and ranks pairs of them; see the module docstring."""

    kind = "annotator"

    def rate(
        self, instructions: Sequence[str], responses: Sequence[str], desc: str = "ratings"
    ) -> list[Rated]:
        raise NotImplementedError

    def rank(
        self,
        instructions: Sequence[str],
        responses_x: Sequence[str],
        responses_y: Sequence[str],
        desc: str = "rankings",
    ) -> list[PairJudgment]:
        """X against Y for each instruction, asked in both orders; the verdicts are X's."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What annotated, for artifacts and reports."""
        return {"kind": self.kind}


class LLMAnnotator(Annotator):
    """An LLM (:class:`autorule.llm.LLM`) filling the rating and ranking templates."""

    kind = "llm"

    def __init__(self, llm, rating_template: str, ranking_template: str, rating_line: str = "last"):
        self.llm = llm
        self.rating_template, self.ranking_template = rating_template, ranking_template
        self.rating_line = rating_line

    def rate(self, instructions, responses, desc="ratings"):
        requests = [
            user(
                fill(
                    self.rating_template,
                    "feedback.rating_template",
                    instruction=instruction,
                    response=response,
                )
            )
            for instruction, response in zip(instructions, responses, strict=True)
        ]
        completions = self.llm.complete_all(requests, desc=desc)
        return rated([c.text if c.ok else None for c in completions], self.rating_line)

    def rank(self, instructions, responses_x, responses_y, desc="rankings"):
        return judge_pairs(
            self.llm, self.ranking_template, instructions, responses_x, responses_y, desc=desc
        )

    def describe(self):
        return {"kind": self.kind, "backend": self.llm.backend, "model": str(self.llm.model)}


def words(text: str) -> list[str]:
    """Lower-cased words, punctuation stripped (the heuristic's unit)."""
    out = []
    for token in text.lower().split():
        token = token.strip(".,;:!?\"'()[]{}<>*`")
        if token:
            out.append(token)
    return out


def distinct_share(text: str) -> float:
    """Distinct words over all words (0 for an empty text): low for repetitive answers."""
    tokens = words(text)
    return len(set(tokens)) / len(tokens) if tokens else 0.0


class HeuristicAnnotator(Annotator):
    """A stand-in annotator computed from the text (no model); see the module docstring.

    * rating = 1 + round(6 x min(1, words / ``rating_words``)): longer answers rate higher, up to
      ``rating_words`` words;
    * ranking, for one order: the response with the larger share of distinct words wins; when the
      two shares are within ``rank_margin`` the response shown as A wins, in either order, so the
      pair comes out "equal", the position-bias tie of the rankings protocol.
    """

    kind = "heuristic"

    def __init__(self, rating_words: int, rank_margin: float):
        if int(rating_words) < 1:
            raise ValueError(f"rating_words must be at least 1, got {rating_words}")
        if not 0 <= float(rank_margin) < 1:
            raise ValueError(f"rank_margin must be in [0, 1), got {rank_margin}")
        self.rating_words, self.rank_margin = int(rating_words), float(rank_margin)

    def rating_of(self, response: str) -> int:
        return self.rating_for(len(words(response)))

    def rating_for(self, count: int) -> int:
        """The rating of an answer of ``count`` words."""
        span = RATING_MAX - RATING_MIN
        return RATING_MIN + round(span * min(1.0, count / self.rating_words))

    def rating_answer(self, response: str) -> str:
        count = len(words(response))
        return f"Stand-in rating from the length: {count} words.\nRating: {self.rating_for(count)}"

    def ranking_answer(self, response_a: str, response_b: str) -> str:
        share_a, share_b = distinct_share(response_a), distinct_share(response_b)
        letter = "B" if share_b > share_a + self.rank_margin else "A"
        return (
            f"Stand-in ranking from the share of distinct words: A {share_a:.2f}, "
            f"B {share_b:.2f}.\nPreferred: {letter}"
        )

    def rate(self, instructions, responses, desc="ratings"):
        return rated([self.rating_answer(r) for r in responses])

    def rank(self, instructions, responses_x, responses_y, desc="rankings"):
        if not len(instructions) == len(responses_x) == len(responses_y):
            raise ValueError("one instruction and two responses per pair")
        x_as_a = [self.ranking_answer(x, y) for x, y in zip(responses_x, responses_y, strict=True)]
        x_as_b = [self.ranking_answer(y, x) for x, y in zip(responses_x, responses_y, strict=True)]
        verdicts = verdicts_from_answers(x_as_a, x_as_b)
        return [
            PairJudgment(first, second, verdict)
            for first, second, verdict in zip(x_as_a, x_as_b, verdicts, strict=True)
        ]

    def describe(self):
        return {
            "kind": self.kind,
            "rating_words": self.rating_words,
            "rank_margin": self.rank_margin,
            "note": "a stand-in computed from the text, not a language model",
        }


# --------------------------------------------------------------------------------------------
# The annotator of the ``feedback`` section (the feedback and feedback_eval stages both ask it)


def annotator_kind(cfg: DictConfig) -> str:
    """``llm`` or ``heuristic``: ``feedback.annotator``, with ``auto`` meaning the heuristic
    stand-in when the role ``feedback.llm`` is the tiny random model (it never writes a readable
    rating or ranking, so the study would have no feedback) and the LLM otherwise."""
    return resolve_kind(str(cfg.feedback.annotator), OmegaConf.select(cfg, "feedback.llm.model"))


def unused_settings(cfg: DictConfig) -> tuple[str, ...]:
    """The settings of the annotator not used (:func:`annotator_kind`): they decide nothing."""
    if annotator_kind(cfg) == "heuristic":
        return (
            "feedback.llm",
            "feedback.rating_template",
            "feedback.ranking_template",
            "feedback.rating_line",
        )
    return ("feedback.heuristic",)


def check_annotator(cfg: DictConfig) -> None:
    """Refuses the ``feedback`` section's annotator settings that cannot work (a
    :class:`~autorule.core.config.ConfigError` naming the key), before any call is paid for."""
    from autorule.core.config import ConfigError, check_choice, check_number
    from autorule.llm import check_role

    section = cfg.feedback
    for key, needed in (
        ("rating_template", ("{instruction}", "{response}")),
        ("ranking_template", ("{instruction}", "{response_a}", "{response_b}")),
    ):
        missing = [p for p in needed if p not in str(section[key])]
        if missing:
            raise ConfigError(f"feedback.{key} lacks the placeholder(s) {missing}")
    check_choice(section.annotator, "feedback.annotator", ANNOTATORS)
    check_choice(section.rating_line, "feedback.rating_line", RATING_LINES)
    if annotator_kind(cfg) == "llm":
        check_role(cfg, "feedback.llm")
    else:
        check_number(section.heuristic.rating_words, "feedback.heuristic.rating_words", low=1)
        check_number(
            section.heuristic.rank_margin,
            "feedback.heuristic.rank_margin",
            integer=False,
            low=0,
            high=1,
            high_open=True,
        )


def build_annotator(cfg: DictConfig) -> Annotator:
    """The annotator ``feedback.annotator`` names: the LLM role ``feedback.llm`` with the two
    templates, or the heuristic stand-in (:class:`HeuristicAnnotator`)."""
    from autorule import llm as llms

    section = cfg.feedback
    if annotator_kind(cfg) == "heuristic":
        log.warning(
            "[feedback] feedback.annotator=%s: the heuristic stand-in computed from the text "
            "(ratings from length, rankings from distinct words), not a language model; its "
            "feedback exercises the study, it measures nothing",
            section.annotator,
        )
        return HeuristicAnnotator(
            int(section.heuristic.rating_words), float(section.heuristic.rank_margin)
        )
    return LLMAnnotator(
        llms.build(cfg, "feedback.llm"),
        str(section.rating_template),
        str(section.ranking_template),
        str(section.rating_line),
    )


def annotator_line(described: dict[str, Any]) -> str:
    """One line naming the annotator, for the Markdown outputs."""
    if described["kind"] == "heuristic":
        return (
            "Annotator: the heuristic stand-in (ratings from length, rankings from the share of "
            "distinct words), not a language model: these numbers exercise the study and measure "
            "nothing."
        )
    return f"Annotator: {described.get('model')} ({described.get('backend')} backend)."
