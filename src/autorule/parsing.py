"""Reading rule lists and reasoning out of free-form LLM output (pure functions, no I/O).

Models asked for "a JSON array of strings" answer in many shapes: a bare array, an array inside a
```json fence, an array after a sentence of preamble, an array with a trailing comma or single or
typographic quotes, an object such as ``{"rules": [...]}``, or a numbered list. :func:`parse_rules`
tries, in order:

1. JSON arrays (or ``{"rules": [...]}`` objects) in fenced code blocks, last block first;
2. the whole answer as JSON;
3. every bracket-balanced ``[...]`` span in the text, last first (models tend to think aloud and
   give the final list at the end);
4. a numbered or bulleted list, one rule per item.

Each JSON candidate is read with :func:`json.loads`, then again after light repairs (typographic
quotes, trailing commas, closing brackets lost to a token budget), then with
:func:`ast.literal_eval`, which accepts Python-style single quotes and evaluates literals only:
model output is never executed. What cannot be read returns an error message instead of rules, so
callers can count it; it never raises.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([\]}])")
_SMART = str.maketrans(
    {
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2018": "'",
        "\u2019": "'",
        "\u00ab": '"',
        "\u00bb": '"',
    }
)
_LIST_ITEM = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*\u2022])\s+(.+?)\s*$")
# Keys under which models wrap the list when they answer with an object instead of an array.
_WRAPPER_KEYS = ("rules", "rule_list", "items", "list")
_ITEM_KEYS = ("rule", "text", "content")


@dataclass
class ParsedRules:
    """Result of :func:`parse_rules`: the rules, or an error saying why there are none."""

    rules: list[str] = field(default_factory=list)
    # How the rules were found: fence, json, span, list; empty when parsing failed.
    method: str = ""
    # Why nothing could be read; None on success (an empty JSON array is a success).
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def split_reasoning(text: str) -> tuple[str, str]:
    """Splits inline ``<think>...</think>`` reasoning from the answer: returns (reasoning, answer).

    Handles the shapes reasoning models produce: a full ``<think>`` block before the answer, a
    closing tag only (chat templates that open the block inside the prompt), and an unclosed block
    (output cut off while thinking: all of it is reasoning, the answer is empty).
    """
    text = text or ""
    if THINK_CLOSE in text:
        head, _, answer = text.partition(THINK_CLOSE)
        reasoning = head.split(THINK_OPEN, 1)[1] if THINK_OPEN in head else head
        return reasoning.strip(), answer.strip()
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        return stripped[len(THINK_OPEN) :].strip(), ""
    return "", text.strip()


def _as_rules(value) -> list[str] | None:
    """The rules in a decoded JSON value, or None when it is not a list of rules."""
    if isinstance(value, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(value.get(key), list):
                return _as_rules(value[key])
        return None
    if not isinstance(value, list):
        return None
    rules = []
    for item in value:
        if isinstance(item, dict):
            item = next((item[k] for k in _ITEM_KEYS if isinstance(item.get(k), str)), None)
        if not isinstance(item, str):
            return None
        if item.strip():
            rules.append(" ".join(item.split()))
    return rules


def _decode(candidate: str) -> list[str] | None:
    """Reads one candidate with json, then after repairs, then as a Python literal."""
    repaired = _TRAILING_COMMA.sub(r"\1", candidate.translate(_SMART))
    attempts = [candidate, repaired]
    stripped = repaired.strip()
    missing = stripped.count("[") - stripped.count("]")
    if stripped.startswith("[") and missing > 0:
        # Cut off by the token budget after a complete item: keep the items that did arrive.
        attempts.append(_TRAILING_COMMA.sub(r"\1", stripped.rstrip(",") + "]" * missing))
    for attempt in attempts:
        try:
            # strict=False lets raw newlines and tabs inside strings through.
            rules = _as_rules(json.loads(attempt, strict=False))
        except (ValueError, RecursionError):
            continue
        if rules is not None:
            return rules
    for attempt in attempts:
        try:
            rules = _as_rules(ast.literal_eval(attempt))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if rules is not None:
            return rules
    return None


def bracket_spans(text: str) -> list[str]:
    """Every top-level ``[...]`` span of ``text`` whose brackets balance, in order of appearance.

    Brackets inside quoted strings do not count, so ``["use [brackets] freely"]`` is one span.
    """
    spans, depth, start, quote, escaped = [], 0, 0, "", False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote or (ch == "\n" and quote == "'"):
                quote = ""  # a newline ends a stray apostrophe ("don't") as a quote
            continue
        if ch in '"\u201c' and depth:
            quote = '"' if ch == '"' else "\u201d"
        elif ch == "'" and depth and text[i - 1 : i] in ("[", ",", " ", "\n", "\t"):
            quote = "'"
        elif ch == "[":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans


def _list_items(text: str) -> list[str]:
    items = []
    for line in text.splitlines():
        match = _LIST_ITEM.match(line)
        if match:
            items.append(match.group(1).strip().strip('"').strip())
    return [item for item in items if item]


def parse_rules(text: str | None) -> ParsedRules:
    """The list of rules in a model's answer; see the module docstring for what is accepted."""
    if not text or not text.strip():
        return ParsedRules(error="empty answer")
    _, answer = split_reasoning(text)
    if not answer:
        return ParsedRules(error="the answer holds only reasoning (cut off inside <think>?)")
    for fence in reversed(_FENCE.findall(answer)):
        rules = _decode(fence[1].strip())
        if rules is None:
            spans = bracket_spans(fence[1])
            rules = next((r for r in map(_decode, reversed(spans)) if r is not None), None)
        if rules is not None:
            return ParsedRules(rules, "fence")
    rules = _decode(answer)
    if rules is not None:
        return ParsedRules(rules, "json")
    for span in reversed(bracket_spans(answer)):
        rules = _decode(span)
        if rules is not None:
            return ParsedRules(rules, "span")
    items = _list_items(answer)
    if items:
        return ParsedRules(items, "list")
    preview = " ".join(answer.split())[:120]
    return ParsedRules(error=f"no JSON array or list of rules found in: {preview!r}")
