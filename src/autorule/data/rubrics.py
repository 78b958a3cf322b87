"""Rubric data: conversations that each carry their own grading checklist.

One datapoint per JSONL line (the format of Thinking Machines' tinker-cookbook rubric recipe)::

    {"convo": [{"role": "user", "content": "What is 4 + 5?"},
               {"role": "assistant", "content": "9"},
               {"role": "user", "content": "What is 12 + 30?"}],
     "rubric_items": [{"rubric_str": "Does the reply give 42 as the sum?",
                       "extraction_regex": "<score>(.*?)</score>",
                       "grader_output_format_instruction": "...",
                       "min_score": 0, "max_score": 1}]}

``convo`` is what the policy sees (it ends on a user turn); the policy writes the next assistant
turn, and an LLM grader scores that answer against each rubric item
(:mod:`autorule.rewards.rubric`). ``extraction_regex`` (its first group is the score),
``grader_output_format_instruction`` and the score's range ``min_score``/``max_score`` are
optional; the defaults ask for a score between 0 and 1 inside ``<score></score>``. A grade outside
the range is unreadable (:func:`autorule.rewards.rubric.parse_score`), so an item whose
instruction asks for another scale declares it. Extra top-level keys (an id, a source) are allowed
and ignored; an unknown key inside a rubric item is refused, since it is most likely a misspelt
field.

Also here, as pure functions: the conversions of Prometheus' Feedback-Collection and of the
addition demo into this format (the preprocess stage writes them), and the rendering of a
conversation into the policy's prompt format (the grpo stage uses it).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import isfinite
from pathlib import Path
from typing import Any

from autorule.core.files import read_utf8

DEFAULT_EXTRACTION_REGEX = r"<score>(.*?)</score>"
DEFAULT_FORMAT_INSTRUCTION = (
    "Write your score, a number between 0 and 1, inside <score></score> tags, e.g. "
    "<score>0.5</score>."
)
ROLES = ("system", "user", "assistant")
# The dataset options (conf/dataset/) that preprocess converts to rubric data.
RUBRIC_DATASETS = ("addition", "prometheus")
ITEM_FIELDS = ("rubric_str", "extraction_regex", "grader_output_format_instruction")
RANGE_FIELDS = ("min_score", "max_score")  # the scores a grade may take, both ends included


class RubricFormatError(ValueError):
    """A rubric datapoint that does not follow the format; the message names where and what."""


@dataclass(frozen=True)
class RubricItem:
    """One thing the grader checks, how it answers, and how its score is read back."""

    rubric_str: str
    extraction_regex: str = DEFAULT_EXTRACTION_REGEX
    grader_output_format_instruction: str = DEFAULT_FORMAT_INSTRUCTION
    min_score: float = 0.0
    max_score: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (*ITEM_FIELDS, *RANGE_FIELDS)}


@dataclass(frozen=True)
class RubricDatapoint:
    """A conversation prefix (ending on a user turn) and the rubric its answer is graded on."""

    convo: tuple[dict[str, str], ...]
    rubric_items: tuple[RubricItem, ...]

    def to_dict(self) -> dict[str, Any]:
        """Every field written out, defaults included, so readers never guess."""
        return {
            "convo": [dict(m) for m in self.convo],
            "rubric_items": [item.to_dict() for item in self.rubric_items],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)


# --------------------------------------------------------------------------------------------
# Validation


def parse_datapoint(obj: Any, where: str = "datapoint") -> RubricDatapoint:
    """``obj`` (one decoded JSONL line) as a datapoint; :class:`RubricFormatError` naming
    ``where`` (e.g. ``file x.jsonl, line 3``) and the field at fault otherwise."""

    def fail(field: str, problem: str) -> RubricFormatError:
        return RubricFormatError(f"{where}: field {field} {problem}")

    if not isinstance(obj, Mapping):
        raise RubricFormatError(f"{where}: a datapoint must be a JSON object, got {_kind(obj)}")
    for key in ("convo", "rubric_items"):
        if key not in obj:
            raise fail(key, "is missing")
    convo = obj["convo"]
    if not isinstance(convo, list) or not convo:
        raise fail("convo", f"must be a non-empty list of messages, got {_kind(convo)}")
    messages = []
    for i, message in enumerate(convo):
        field = f"convo[{i}]"
        if not isinstance(message, Mapping):
            raise fail(field, f"must be an object with role and content, got {_kind(message)}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise fail(f"{field}.role", f"must be one of {list(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise fail(f"{field}.content", f"must be a string, got {_kind(content)}")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise fail(
            f"convo[{len(messages) - 1}].role",
            f"must be 'user': the conversation ends on the turn the policy answers, got "
            f"{messages[-1]['role']!r}",
        )
    items_in = obj["rubric_items"]
    if not isinstance(items_in, list) or not items_in:
        raise fail("rubric_items", f"must be a non-empty list, got {_kind(items_in)}")
    items = [_parse_item(item, f"rubric_items[{i}]", fail) for i, item in enumerate(items_in)]
    return RubricDatapoint(tuple(messages), tuple(items))


def _parse_item(item: Any, field: str, fail) -> RubricItem:
    if not isinstance(item, Mapping):
        raise fail(field, f"must be an object with rubric_str, got {_kind(item)}")
    allowed = [*ITEM_FIELDS, *RANGE_FIELDS]
    unknown = sorted(set(item) - set(allowed))
    if unknown:
        raise fail(f"{field}", f"has unknown keys {unknown}; allowed: {allowed}")
    text = item.get("rubric_str")
    if not isinstance(text, str) or not text.strip():
        raise fail(f"{field}.rubric_str", f"must be a non-empty string, got {_kind(text)}")
    values = {"rubric_str": text}
    for name in ITEM_FIELDS[1:]:
        if item.get(name) is None:
            continue
        if not isinstance(item[name], str) or not item[name].strip():
            raise fail(f"{field}.{name}", f"must be a non-empty string, got {_kind(item[name])}")
        values[name] = item[name]
    regex = values.get("extraction_regex", DEFAULT_EXTRACTION_REGEX)
    try:
        groups = re.compile(regex, re.DOTALL).groups
    except re.error as err:
        raise fail(
            f"{field}.extraction_regex", f"is not a valid regular expression: {err}"
        ) from None
    if groups < 1:
        raise fail(f"{field}.extraction_regex", "needs a group: its first group is the score")
    for name in RANGE_FIELDS:
        value = item.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not isfinite(value):
            raise fail(f"{field}.{name}", f"must be a finite number, got {_kind(value)}")
        values[name] = float(value)
    low = values.get("min_score", RubricItem.min_score)
    high = values.get("max_score", RubricItem.max_score)
    if not low < high:
        raise fail(f"{field}.max_score", f"must be above min_score ({low:g}), got {high:g}")
    return RubricItem(**values)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" if value else "an empty string"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return type(value).__name__


def read_jsonl(path: str | Path) -> list[RubricDatapoint]:
    """Every datapoint of a rubric JSONL file (blank lines skipped); errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rubric data file {path} does not exist")
    text = read_utf8(path, "rubric data file", RubricFormatError)
    out = []
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON may hold U+2028
        if not line.strip():
            continue
        where = f"file {path}, line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise RubricFormatError(f"{where}: not valid JSON ({err.msg})") from None
        out.append(parse_datapoint(obj, where))
    if not out:
        raise RubricFormatError(f"file {path} holds no datapoints")
    return out


def write_jsonl(path: str | Path, datapoints: Iterable[RubricDatapoint]) -> int:
    """Writes one datapoint per line (every field, secrets masked, atomically: the artifact
    writer of :mod:`autorule.core.files`); returns how many."""
    from autorule.core.files import write_jsonl as write_rows

    return write_rows(path, (datapoint.to_dict() for datapoint in datapoints))


def dedupe(datapoints: Iterable[RubricDatapoint]) -> list[RubricDatapoint]:
    """Exact duplicates dropped, first occurrence kept, order otherwise unchanged."""
    seen: set[str] = set()
    out = []
    for datapoint in datapoints:
        key = datapoint.to_json()
        if key not in seen:
            seen.add(key)
            out.append(datapoint)
    return out


# --------------------------------------------------------------------------------------------
# Prometheus Feedback-Collection

PROMETHEUS_COLUMNS = (
    "orig_instruction",
    "orig_criteria",
    *(f"orig_score{i}_description" for i in range(1, 6)),
    "orig_reference_answer",
)
# Feedback-Collection grades on 1-5; the grader keeps that scale (so does the tinker-cookbook
# recipe): a reward of 5 is the best, 1 the worst.
PROMETHEUS_FORMAT_INSTRUCTION = (
    "Write your score, a whole number from 1 to 5, inside <score></score> tags, e.g. "
    "<score>3</score>."
)


# The recipe's calibration lines (tinker-cookbook recipes/rubric/data.py,
# PrometheusDatapointListBuilder): "<score>i.0</score>: description" for i in 1..5, a request for a
# score between 1 and 5, and the reference answer as one that scored 5. Our wording.
RECIPE_FORMAT_INSTRUCTION = (
    "Give your score, a number between 1 and 5, inside <score></score> tags."
)
PROMETHEUS_FORMATS = ("ours", "recipe")


def prometheus_datapoint(row: Mapping[str, Any], layout: str = "ours") -> RubricDatapoint:
    """One Feedback-Collection row as a datapoint: the instruction is the single user turn; the
    one rubric item gives the criterion, a calibration line per score 1-5 and the reference
    answer as an example of a 5. ``layout``: ``ours`` (``Score i: ...`` lines, a whole number
    asked for) or ``recipe`` (the rubric recipe's ``<score>i.0</score>: ...`` lines, a number
    between 1 and 5 asked for)."""
    criterion = str(row["orig_criteria"]).strip()
    descriptions = [str(row[f"orig_score{i}_description"]).strip() for i in range(1, 6)]
    reference = str(row["orig_reference_answer"]).strip()
    if layout == "recipe":
        lines = [
            f"Grade the reply on this: {criterion}. Give it a score between 1 and 5.",
            "How each score is calibrated:",
            *(f"<score>{i}.0</score>: {d}" for i, d in enumerate(descriptions, 1)),
            "",
            f"A reference reply that scored 5: {reference}",
        ]
        instruction = RECIPE_FORMAT_INSTRUCTION
    elif layout == "ours":
        lines = [
            f"Judge the reply on this criterion: {criterion}",
            "",
            "What each score means:",
            *(f"Score {i}: {d}" for i, d in enumerate(descriptions, 1)),
            "",
            "A reference answer that deserves a score of 5:",
            reference,
        ]
        instruction = PROMETHEUS_FORMAT_INSTRUCTION
    else:
        raise ValueError(f"preprocess.rubric.format={layout!r}: one of {PROMETHEUS_FORMATS}")
    return RubricDatapoint(
        convo=({"role": "user", "content": str(row["orig_instruction"])},),
        rubric_items=(
            RubricItem(
                rubric_str="\n".join(lines),
                grader_output_format_instruction=instruction,
                min_score=1.0,
                max_score=5.0,
            ),
        ),
    )


# --------------------------------------------------------------------------------------------
# The addition demo


def addition_datapoint(x: int, y: int) -> RubricDatapoint:
    """``What is x + y?`` after a worked example (4 + 5 = 9), graded on whether the reply gives
    the sum (the tinker-cookbook recipe's demo: the grader could be replaced by string matching,
    which makes it a clean check of the whole loop)."""
    return RubricDatapoint(
        convo=(
            {"role": "user", "content": "What is 4 + 5?"},
            {"role": "assistant", "content": "9"},
            {"role": "user", "content": f"What is {x} + {y}?"},
        ),
        rubric_items=(RubricItem(rubric_str=f"Does the reply give {x + y} as the answer?"),),
    )


def addition_datapoints(
    num_train: int, num_test: int, seed: int, high: int = 1000
) -> tuple[list[RubricDatapoint], list[RubricDatapoint]]:
    """``num_train`` + ``num_test`` datapoints with x, y uniform in 0..high (inclusive), drawn in
    order from one seeded generator: the first ``num_train`` train, the rest test (the recipe:
    10,000 and 1,000, seed 42)."""
    rng = random.Random(seed)
    drawn = [(rng.randint(0, high), rng.randint(0, high)) for _ in range(num_train + num_test)]
    points = [addition_datapoint(x, y) for x, y in drawn]
    return points[:num_train], points[num_train:]


# --------------------------------------------------------------------------------------------
# Prompts


def render_prompt(
    convo: Sequence[Mapping[str, str]],
    prompt_format: str,
    plain_template: str,
    tokenizer=None,
) -> str:
    """The conversation as the policy reads it, ready for its answer.

    ``chat_template``: the tokenizer's chat template with the generation prompt. ``plain``: each
    user turn in ``plain_template`` (``<|user|>{prompt}<|assistant|>``), each earlier assistant
    turn after it followed by the tokenizer's eos (how the SFT policy saw its own answers end); a
    system message is put before the next user turn's text, a blank line between.
    """
    if prompt_format == "chat_template":
        return tokenizer.apply_chat_template(
            [dict(m) for m in convo], tokenize=False, add_generation_prompt=True
        )
    if prompt_format != "plain":
        raise ValueError(f"unknown prompt format {prompt_format!r}: plain or chat_template")
    eos = getattr(tokenizer, "eos_token", None) or ""
    parts, system = [], []
    for message in convo:
        if message["role"] == "system":
            system.append(message["content"])
        elif message["role"] == "user":
            text = "\n\n".join([*system, message["content"]])
            parts.append(plain_template.replace("{prompt}", text))
            system = []
        else:
            parts.append(message["content"] + eos)
    return "".join(parts)
