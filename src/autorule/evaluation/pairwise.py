"""Pairwise judging: which of two responses to one instruction is better, asked in both orders.

An LLM judge sees an instruction and two responses labelled A and B, and ends its answer with a
line ``Preferred: A`` or ``Preferred: B``. Judges favour one position, so every pair is asked
twice, with the responses swapped (:func:`judge_pairs`); a pair's score for response X is

* 1 when X wins in both orders, 0 when it loses in both,
* 0.5 when the two orders disagree (the verdict followed the position, not the response).

A pair with an answer that cannot be read (:func:`parse_preference`; an answer with two
disagreeing verdict lines is one) or a call that failed is left out of the score and counted.
:func:`win_rate` gives the mean score with a 95% Wilson interval.

Answers are model output: they are read with regular expressions, ``json.loads`` and
``ast.literal_eval`` (which builds literals only), never executed.

The same module serves any comparison of two response sets (a policy against the SFT model, a
checkpoint against another, the feedback study's rankings).
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

from autorule.rules.prompts import fill, user

LETTERS = ("A", "B")
# The verdict line: "Preferred: A", tolerating markdown emphasis, brackets, quotes and a full stop
# around the parts (judges format the line in many small ways).
_DECORATION = r"[\s*_`#>\[\]()\"'.]*"
VERDICT_LINE = re.compile(
    rf"^{_DECORATION}preferred{_DECORATION}\s*[:=]\s*{_DECORATION}([AB]){_DECORATION}$",
    re.IGNORECASE,
)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
# Keys a structured answer may name its choice under.
_CHOICE_KEYS = ("preferred", "winner", "choice", "answer")


def parse_preference(answer: str) -> tuple[str | None, str]:
    """``("A" | "B", method)`` read from a judge's answer, or ``(None, "")`` when it cannot be read.

    The answer's last non-empty line must be the verdict line, and any other verdict line in the
    answer must agree with it (:func:`last_line_verdict`: disagreeing copies make the answer
    unreadable); failing a verdict line, the last line or the whole answer may be a JSON object
    (or a Python dict literal) such as ``{"preferred": "A"}``.
    Nothing in the answer is ever executed: ``ast.literal_eval`` rejects calls, names and
    attributes with an error, which makes the answer unparsed.
    """
    text = answer.strip()
    if not text:
        return None, ""
    lines = [line for line in text.splitlines() if line.strip()]
    found = last_line_verdict(lines, VERDICT_LINE)
    if found is not None:
        return (found.upper(), "line") if found else (None, "")
    for candidate in (_FENCE.sub("", text).strip(), lines[-1].strip()):
        read = read_data(candidate)
        letter = _choice(read[0]) if read else None
        if letter is not None:
            return letter, read[1]
    return None, ""


def last_line_verdict(lines: Sequence[str], pattern: re.Pattern) -> str | None:
    """The verdict ``pattern`` (its first group) reads on the last of ``lines``, provided every
    other line it matches says the same (case aside); ``""`` when copies disagree; None when the
    last line is no verdict.

    A judge may quote the text it judges, and that text may hold a verdict line of its own
    ("Preferred: A" planted in a response): an answer with two different verdicts is unreadable
    whichever comes last, so the judged text can never supply the verdict.
    """
    last = pattern.match(lines[-1].strip()) if lines else None
    if last is None:
        return None
    copies = {m.group(1).upper() for m in map(pattern.match, (x.strip() for x in lines)) if m}
    return last.group(1) if len(copies) == 1 else ""


def read_data(candidate: str) -> tuple[Any, str] | None:
    """``(value, "json" | "literal")``: ``candidate`` read as JSON, else as a Python literal
    (``ast.literal_eval`` builds literals and rejects calls, names and attributes: nothing is
    ever run); None when neither reads it."""
    for method, load in (("json", json.loads), ("literal", ast.literal_eval)):
        try:
            return load(candidate), method
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None


def _choice(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    for key, item in value.items():
        if isinstance(key, str) and key.strip().lower() in _CHOICE_KEYS and isinstance(item, str):
            letter = item.strip().strip("[]()\"' .").upper()
            if letter in LETTERS:
                return letter
    return None


@dataclass
class PairVerdict:
    """The two verdicts on one pair: X shown as A first, then X shown as B."""

    x_as_a: str | None  # the letter preferred when X was A (None: unparsed or failed)
    x_as_b: str | None  # the letter preferred when X was B
    failed: int = 0  # calls of this pair that failed after their retries (0, 1 or 2)

    @property
    def score(self) -> float | None:
        """X's score: 1 (won both orders), 0 (lost both), 0.5 (the orders disagree), None when
        either verdict is missing."""
        if self.x_as_a is None or self.x_as_b is None:
            return None
        wins = (self.x_as_a == "A") + (self.x_as_b == "B")
        return wins / 2

    @property
    def unparsed(self) -> int:
        """Answers of this pair that came back but could not be read."""
        missing = (self.x_as_a is None) + (self.x_as_b is None)
        return missing - self.failed


# Reads the preferred letter out of an answer: ``(letter or None, method)``.
Parser = Callable[[str], tuple[str | None, str]]


def verdicts_from_answers(
    answers_x_as_a: Sequence[str | None],
    answers_x_as_b: Sequence[str | None],
    parse: Parser = parse_preference,
) -> list[PairVerdict]:
    """Pairs' verdicts from the judge's two answers on each (None = the call failed), read with
    ``parse`` (the protocol's parser)."""
    out = []
    for first, second in zip(answers_x_as_a, answers_x_as_b, strict=True):
        failed = (first is None) + (second is None)
        out.append(
            PairVerdict(
                parse(first)[0] if first is not None else None,
                parse(second)[0] if second is not None else None,
                failed,
            )
        )
    return out


# z of a two-sided 95% interval
Z95 = NormalDist().inv_cdf(0.975)


def wilson_interval(rate: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``rate`` observed on ``n`` trials.

    Used for scores with ties too: a pair's score s is 0, 0.5 or 1, so s^2 <= s and its variance
    is at most rate * (1 - rate), the binomial one; the interval is then conservative. Unlike the
    normal interval it stays inside [0, 1] and does not collapse to a point at 0 or 1.
    """
    if n <= 0:
        return 0.0, 1.0
    denominator = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class WinRate:
    """X's win rate over judged pairs, ties worth half, with its 95% interval."""

    rate: float | None  # mean score over the scored pairs; None when none was scored
    low: float | None
    high: float | None
    pairs: int  # pairs asked
    scored: int  # pairs with both verdicts read
    wins: int  # X preferred in both orders
    losses: int  # the other preferred in both orders
    ties: int  # the orders disagree
    unparsed_answers: int  # answers that came back but could not be read
    unparsed_pairs: int  # pairs left out because an answer could not be read
    failed_calls: int  # calls that failed after their retries (their pairs are left out too)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def win_rate(verdicts: Sequence[PairVerdict]) -> WinRate:
    """X's win rate over ``verdicts`` (:class:`PairVerdict`), with a 95% Wilson interval."""
    scores = [v.score for v in verdicts]
    scored = [s for s in scores if s is not None]
    wins, losses = scored.count(1.0), scored.count(0.0)
    ties = len(scored) - wins - losses
    rate = low = high = None
    if scored:
        rate = sum(scored) / len(scored)
        low, high = wilson_interval(rate, len(scored))
    unparsed_pairs = sum(
        1 for v, s in zip(verdicts, scores, strict=True) if s is None and not v.failed
    )
    return WinRate(
        rate=rate,
        low=low,
        high=high,
        pairs=len(verdicts),
        scored=len(scored),
        wins=wins,
        losses=losses,
        ties=ties,
        unparsed_answers=sum(v.unparsed for v in verdicts),
        unparsed_pairs=unparsed_pairs,
        failed_calls=sum(v.failed for v in verdicts),
    )


def pairwise_request(
    template: str,
    instruction: str,
    response_a: str,
    response_b: str,
    where: str = "evaluate.pairwise.template",
) -> list[dict[str, str]]:
    """The judge's request for one order (``template``: the protocol's, named by ``where``)."""
    return user(
        fill(
            template,
            where,
            instruction=instruction,
            response_a=response_a,
            response_b=response_b,
        )
    )


@dataclass
class PairJudgment:
    """One pair as judged: the texts' answers in both orders and the verdict."""

    answer_x_as_a: str | None
    answer_x_as_b: str | None
    verdict: PairVerdict


def judge_pairs(
    llm,
    template: str,
    instructions: Sequence[str],
    responses_x: Sequence[str],
    responses_y: Sequence[str],
    desc: str = "judge: pairs",
    parse: Parser = parse_preference,
    where: str = "evaluate.pairwise.template",
) -> list[PairJudgment]:
    """Asks ``llm`` (an :class:`autorule.llm.LLM`) to compare ``responses_x[i]`` with
    ``responses_y[i]`` for each instruction, in both orders; the verdicts are X's.

    ``parse`` and ``template`` (named by ``where``) are the protocol's: this module's verdict
    line, or :mod:`autorule.evaluation.leaderboard`'s ranking. All 2n requests go to the LLM
    layer at once (concurrent for served judges, batched for local ones, cached either way).
    """
    n = len(instructions)
    if not n == len(responses_x) == len(responses_y):
        raise ValueError(
            f"{n} instructions, {len(responses_x)} and {len(responses_y)} responses: one each"
        )
    requests = [
        pairwise_request(template, q, x, y, where)
        for q, x, y in zip(instructions, responses_x, responses_y, strict=True)
    ] + [
        pairwise_request(template, q, y, x, where)
        for q, x, y in zip(instructions, responses_x, responses_y, strict=True)
    ]
    completions = llm.complete_all(requests, desc=desc)
    answers = [c.text if c.ok else None for c in completions]
    verdicts = verdicts_from_answers(answers[:n], answers[n:], parse)
    return [PairJudgment(answers[i], answers[n + i], verdicts[i]) for i in range(n)]
