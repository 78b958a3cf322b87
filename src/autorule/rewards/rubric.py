"""The ``rubric`` reward term: an LLM grader scores each answer against its datapoint's rubric.

Rubric data (:mod:`autorule.data.rubrics`, docs/rubric.md) gives every prompt its own list of
rubric items. For each (answer, item) the grader, LLM role ``rubric.grader``, gets one user
message (``rubric.prompt``): the conversation so far (every message before the policy's answer),
then the policy's answer set apart as the only thing to grade, then the item and its format
instruction. The score is the first group of the item's ``extraction_regex`` (DOTALL) in the
grader's answer: a plain ASCII decimal number within the item's ``min_score``..``max_score``,
the same in every match (:func:`parse_score`). A grade with no match, a match that is no such
number, or disagreeing matches scores 0.0 and is counted as unparsed (a failed call scores 0.0
too, counted as failed).

    reward = mean of the item scores + format_coef x (format_ok - 1)

the tinker-cookbook rubric recipe's formula with its coefficient 0.1 (``rewards.rubric``).
``format_ok`` (:func:`answer_format_ok`) says whether the policy's answer is a well-formed chat
reply: it has some text, and it was not cut off at the token limit.

Metrics per call (:class:`~autorule.rewards.registry.MetricLog`, TRL's ``log_metric``):
``rubric/format`` (share of answers well formed), ``rubric/score`` (mean item score),
``rubric/unparsed`` and ``rubric/failed`` (shares of grades), ``rubric/item_<j>`` (mean score of
the j-th item of each datapoint's rubric). With ``rubric.debug_examples=N`` the term keeps N graded
examples of its latest call, and ``show_examples()`` prints them (the grpo stage calls it at each
logging step).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from autorule import llm as llms
from autorule.data.rubrics import RubricItem, parse_datapoint
from autorule.llm import LLMCallError
from autorule.rewards.judge import _as_text
from autorule.rewards.registry import MetricLog, RewardContext, named, register
from autorule.rules.prompts import fill, render_conversation

log = logging.getLogger(__name__)

PROMPT_PLACEHOLDERS = ("conversation", "answer", "rubric", "format_instruction")

# --------------------------------------------------------------------------------------------
# Pure parts


def grader_prompt(
    template: str, convo: Sequence[dict[str, str]], answer: str, item: RubricItem
) -> str:
    """The grader's one user message: ``template`` (``rubric.prompt``) with the conversation
    before the answer, the answer alone, the rubric item and its format instruction filled in."""
    return fill(
        template,
        "rubric.prompt",
        conversation=render_conversation(convo),
        answer=answer.strip(),
        rubric=item.rubric_str.strip(),
        format_instruction=item.grader_output_format_instruction.strip(),
    )


# A score as a grader should write it: plain ASCII digits, an optional sign and decimal point. No
# exponent (1e308), no digit separators (1_000), no full-width or other Unicode digits (５), and
# at most 32 characters, all of which float() would otherwise take.
PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
MAX_SCORE_CHARS = 32


def parse_score(text: str, regex: str, low: float = 0.0, high: float = 1.0) -> float | None:
    """The score in a grader's answer: the first group of the regex's matches (DOTALL), a plain
    number within [low, high] (the rubric item's ``min_score``/``max_score``); None otherwise.

    Every match must give the same score: a grader may quote the graded answer after its own
    score, and that answer may hold a score tag of its own, so an answer with disagreeing copies
    is unreadable (the graded text must never supply the grade). A copy that is not a plain
    number, or is out of range, makes the answer unreadable too.
    """
    found = {_plain_score(m.group(1), low, high) for m in re.finditer(regex, text, re.DOTALL)}
    if len(found) != 1:
        return None
    return found.pop()


def _plain_score(group: str | None, low: float, high: float) -> float | None:
    text = (group or "").strip()
    if len(text) > MAX_SCORE_CHARS or not PLAIN_NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if low <= value <= high else None


def rubric_reward(scores: Sequence[float], format_ok: bool, format_coef: float = 0.1) -> float:
    """Mean item score + format_coef x (format_ok - 1): a malformed answer loses format_coef."""
    if not scores:
        raise ValueError("a rubric reward needs at least one item score")
    return float(np.mean(scores)) + format_coef * (float(bool(format_ok)) - 1.0)


def answer_format_ok(
    text: str,
    ids: Sequence[int] | None = None,
    stop_ids: Sequence[int] = (),
    budget: int | None = None,
) -> bool:
    """Whether a plain chat answer is well formed: it holds some non-space text, and it was not
    cut off at the token limit.

    Cut off means, as TRL counts clipped completions, that its last token ``ids[-1]`` is not a
    stop token (``stop_ids``: eos, pad); an answer shorter than ``budget`` tokens ended by itself
    whatever its last token (a server may strip the stop token). Without ``ids`` only the text
    is checked.
    """
    if not text.strip():
        return False
    if not ids:
        return True
    if budget is not None and len(ids) < budget:
        return True
    return ids[-1] in set(stop_ids)


# --------------------------------------------------------------------------------------------
# The debug view


@dataclass
class GradedExample:
    """One answer with everything the grader saw and said, for the debug view."""

    convo: list[dict[str, str]]
    answer: str
    format_ok: bool
    reward: float
    grades: list[dict[str, Any]] = field(default_factory=list)  # prompt, output, score, error


def render_example(example: GradedExample, title: str) -> str:
    """One graded example as coloured terminal text (termcolor: plain when not a terminal)."""
    from termcolor import colored

    rule = "=" * 80

    def section(name: str, body: str, color: str) -> list[str]:
        return [colored(rule, color), colored(name, color, attrs=["bold"]), colored(body, color)]

    lines = [colored(f"{rule}\n{title}", "white", attrs=["bold"])]
    lines += section("The conversation", render_conversation(example.convo), "blue")
    lines += section(
        f"The policy's answer (well formed: {example.format_ok})", example.answer, "green"
    )
    for j, grade in enumerate(example.grades):
        lines += section(f"Grader prompt, item {j}", grade["prompt"], "yellow")
        output = grade["output"] if grade["error"] is None else f"call failed: {grade['error']}"
        lines += section(f"Grader output, item {j}", output, "magenta")
        score = "unparsed (0.0)" if grade["score"] is None else f"{grade['score']:g}"
        lines.append(colored(f"score: {score}", "red" if grade["score"] is None else "cyan"))
    lines.append(colored(f"reward: {example.reward:.4f}", "white", attrs=["bold"]))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The term


def _items(value: Any, where: str) -> list[RubricItem]:
    """A ``rubric_items`` value as TRL hands it over: a JSON string or a list of item dicts."""
    if isinstance(value, str):
        value = json.loads(value)
    convo = [{"role": "user", "content": "-"}]  # only the items are checked here
    return list(parse_datapoint({"convo": convo, "rubric_items": value}, where).rubric_items)


def _convo(value: Any, prompt: Any) -> list[dict[str, str]]:
    """The conversation before the answer: the ``convo`` column (JSON or messages), else the
    prompt (a message list, or its text as one user turn)."""
    if isinstance(value, str):
        value = json.loads(value)
    if value is not None:
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    if isinstance(prompt, (list, tuple)):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
    return [{"role": "user", "content": _as_text(prompt)}]


@dataclass
class Batch:
    """One call's answers, with what the grader needs for each."""

    items: list[list[RubricItem]]  # the rubric items of each answer's datapoint
    convos: list[list[dict[str, str]]]  # the conversation before each answer
    answers: list[str]
    format_ok: list[bool]


@dataclass
class Grades:
    """The grader's answers to one batch, one per (answer, item), and the scores read from
    them."""

    requests: list[list[dict[str, str]]]
    completions: list[Any]  # autorule.llm.Completion, in request order
    parsed: list[float | None]  # the score read from each grade; None: unparsed or failed
    scores: list[list[float]]  # per answer, its items' scores (0.0 for a grade without one)
    unparsed: int  # grades that came back but held no readable score
    failed: int  # calls that failed after their retries


def read_batch(
    prompts, completions, rubric_items, convo, completion_ids, stop_ids, budget
) -> Batch:
    """The call's keyword arguments (as TRL passes them) as a :class:`Batch`."""
    n = len(completions)
    if rubric_items is None:
        raise ValueError(
            "the reward term rubric needs each prompt's rubric items (keyword rubric_items): "
            "train on rubric data (grpo.rubric_dataset or grpo.rubric_file)"
        )
    if len(rubric_items) != n:
        raise ValueError(f"{len(rubric_items)} rubric_items for {n} completions")
    items = [
        _items(value, f"rubric_items of completion {i}") for i, value in enumerate(rubric_items)
    ]
    convos = [_convo(None if convo is None else convo[i], prompts[i]) for i in range(n)]
    answers = [_as_text(c) for c in completions]
    ids = completion_ids or [None] * n
    ok = [answer_format_ok(answers[i], ids[i], stop_ids, budget) for i in range(n)]
    return Batch(items, convos, answers, ok)


def grade_all(grader, template: str, batch: Batch) -> Grades:
    """Asks the grader about every (answer, item) at once and reads the scores; stops when every
    call failed (the grader is down: training on zeros would be silent)."""
    requests, owner = [], []
    for i, items in enumerate(batch.items):
        for j, item in enumerate(items):
            prompt = grader_prompt(template, batch.convos[i], batch.answers[i], item)
            requests.append([{"role": "user", "content": prompt}])
            owner.append((i, j))
    completions = grader.complete_all(requests, desc="rubric")
    failed = sum(not c.ok for c in completions)
    if completions and failed == len(completions):
        raise LLMCallError(f"every rubric grader call failed; the first: {completions[0].error}")
    if failed:
        log.warning("rubric: %d of %d grader calls failed (scored 0)", failed, len(completions))
    scores: list[list[float]] = [[] for _ in batch.answers]
    parsed: list[float | None] = []
    for (i, j), completion in zip(owner, completions, strict=True):
        item = batch.items[i][j]
        value = None
        if completion.ok:
            value = parse_score(
                completion.text, item.extraction_regex, item.min_score, item.max_score
            )
        parsed.append(value)
        scores[i].append(0.0 if value is None else value)
    unparsed = sum(c.ok and v is None for c, v in zip(completions, parsed, strict=True))
    return Grades(requests, completions, parsed, scores, unparsed, failed)


def grade_metrics(batch: Batch, grades: Grades) -> list[tuple[dict[str, float], int]]:
    """The call's metrics, each with the number of answers it averages over: the shares of
    well-formed answers, unparsed and failed grades, the mean score, and each item's."""
    total = len(grades.completions)
    means = [float(np.mean(s)) for s in grades.scores]
    overall = {
        "rubric/format": float(np.mean(batch.format_ok)),
        "rubric/score": float(np.mean(means)),
        "rubric/unparsed": grades.unparsed / total,
        "rubric/failed": grades.failed / total,
    }
    out = [(overall, len(batch.answers))]
    for j in range(max(len(s) for s in grades.scores)):
        column = [s[j] for s in grades.scores if len(s) > j]
        out.append(({f"rubric/item_{j}": float(np.mean(column))}, len(column)))
    return out


def graded_examples(
    batch: Batch, grades: Grades, rewards: Sequence[float], n_debug: int
) -> list[GradedExample]:
    """The first ``n_debug`` answers with everything their grader saw and said."""
    examples, k = [], 0
    for i in range(min(len(batch.answers), n_debug)):
        example = GradedExample(batch.convos[i], batch.answers[i], batch.format_ok[i], rewards[i])
        for _ in batch.items[i]:
            completion = grades.completions[k]
            example.grades.append(
                {
                    "prompt": grades.requests[k][0]["content"],
                    "output": completion.text,
                    "score": grades.parsed[k],
                    "error": completion.error,
                }
            )
            k += 1
        examples.append(example)
    return examples


def build_grader(context: RewardContext):
    """The LLM of role ``rubric.grader``, on the trainer's device when it runs locally."""
    overrides = {}
    if context.device and OmegaConf.select(context.cfg, "rubric.grader.device") == "auto":
        overrides["device"] = context.device
    return llms.build(context.cfg, "rubric.grader", overrides)


@register("rubric", sections=("rubric",))
def rubric_term(context: RewardContext):
    """Rubric items graded by the LLM of role ``rubric.grader`` (settings: ``rubric`` and
    ``rewards.rubric``).

    Each call needs the datapoints' rubric items: the ``rubric_items`` keyword (one per
    completion: a JSON list or a list of item dicts), which TRL passes from the dataset column of
    that name; ``convo`` (same form) gives the conversation before each answer, else the prompt
    stands for it.
    """
    cfg = context.cfg
    section = cfg.rubric
    coef = float(cfg.rewards.rubric.format_coef)
    template = str(section.prompt)
    fill(template, "rubric.prompt", **dict.fromkeys(PROMPT_PLACEHOLDERS, ""))
    n_debug = int(section.debug_examples)
    if n_debug < 0:
        raise ValueError(f"rubric.debug_examples must be >= 0, got {n_debug}")
    grader = build_grader(context)
    tokenizer = context.tokenizer
    stop_ids = [
        i
        for i in (
            getattr(tokenizer, "eos_token_id", None),
            getattr(tokenizer, "pad_token_id", None),
        )
        if i is not None
    ]
    metrics = MetricLog()
    kept: list[GradedExample] = []

    def rubric(
        prompts, completions, rubric_items=None, convo=None, completion_ids=None, **kwargs
    ) -> list[float]:
        batch = read_batch(
            prompts,
            completions,
            rubric_items,
            convo,
            completion_ids,
            stop_ids,
            context.max_completion_length,
        )
        grades = grade_all(grader, template, batch)
        rewards = [
            rubric_reward(scores, ok, coef)
            for scores, ok in zip(grades.scores, batch.format_ok, strict=True)
        ]
        for values, weight in grade_metrics(batch, grades):
            metrics.add(values, weight, kwargs.get("log_metric"))
        if n_debug:
            kept[:] = graded_examples(batch, grades, rewards, n_debug)
        return rewards

    def show_examples(step: int | None = None) -> int:
        """Prints the kept examples (the debug view) and forgets them; returns how many."""
        shown = len(kept)
        where = f" at step {step}" if step is not None else ""
        for index, example in enumerate(kept, 1):
            print(render_example(example, f"rubric example {index}/{shown}{where}"), flush=True)
        kept.clear()
        return shown

    def close() -> None:
        for attribute in ("_model", "_engine"):
            if getattr(grader, attribute, None) is not None:
                setattr(grader, attribute, None)

    rubric.metrics, rubric.close, rubric.show_examples = metrics.pop, close, show_examples
    rubric.grader, rubric.examples = grader, kept
    return named(rubric, "rubric")
