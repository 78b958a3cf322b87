"""Reading rule lists and reasoning out of free-form LLM output (pure functions, no I/O).

Models asked for "a JSON array of strings" answer in many shapes: a bare array, an array inside a
```json fence, an array after a sentence of preamble, an array with a trailing comma or single or
typographic quotes, an object such as ``{"rules": [...]}``, a list cut off by the token budget, or
a numbered list. :func:`parse_rules` looks for candidate lists in three tiers:

1. JSON arrays (or ``{"rules": [...]}`` objects) in fenced code blocks;
2. the whole answer as JSON;
3. every bracket-balanced ``[...]`` span in the text, plus an unclosed one at its end.

Within a tier the answer is the last *non-empty* list (models draft and then give the final list at
the end; an empty list mentioned in passing, "the rejected one has []", is not the answer), unless
a list is labelled as final ("Final: [...]", "Final answer:"), in which case the last labelled one
wins over lists that follow it ("Also consider [...]"). A lower tier is consulted only when the
tiers above hold no non-empty list; an answer whose only lists are empty parses as no rules.
Skipped candidates are noted in :attr:`ParsedRules.warnings`, so the choice can be audited.

A list cut off by the token budget (``["a", "b", "c is cu``) keeps its complete items and is
flagged :attr:`ParsedRules.truncated`. Only when no JSON list is found at all is a numbered or
bulleted list read as rules (4.), and not when the text before it reads as a refusal ("I can't
comply because:" followed by reasons is not a rule list).

Each JSON candidate is read with :func:`json.loads`, then again after light repairs (typographic
quotes, trailing commas), then with :func:`ast.literal_eval`, which accepts Python-style single
quotes and evaluates literals only: model output is never executed. What cannot be read returns
an error message instead of rules, so callers can count it; it never raises.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field

from autorule.llm.reasoning import split_reasoning

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
_LIST_ITEM = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*\u2022])\s+(.+?)\s*$", re.MULTILINE)
# A list labelled as the final answer: "final" shortly before it, on its line or the one above,
# with no other list in between ("Final: [a]. Also consider [b]" labels only [a]).
_FINAL_LABEL = re.compile(r"\bfinal\b[^\n\[\]]*\n?[^\n\[\]]*\Z", re.IGNORECASE)
_LABEL_WINDOW = 80  # characters before a list searched for the label
_CUT_TRIES = 3  # prefixes of a cut-off list tried, longest first
# Openings of a refusal. Checked only in the text before a bulleted list (the JSON tiers do not
# need it: an array of strings is an answer in the requested format whatever surrounds it).
_REFUSAL = re.compile(
    r"\b(?:I\s+(?:can\s*not|can't|won't|will\s+not|must\s+decline|refuse|am\s+(?:unable|not\s+able))"
    r"|I'm\s+(?:sorry|unable|not\s+able)|I\s+apologi[sz]e|unable\s+to\s+(?:comply|help|assist))",
    re.IGNORECASE,
)
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
    # The list was cut off (token budget): ``rules`` holds only the items that arrived whole.
    truncated: bool = False
    # What a reader of the parse should know: truncation, other lists that were not chosen.
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


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


@dataclass
class _Scan:
    """The ``[...]`` structure of a text (see :func:`_scan`)."""

    spans: list[tuple[int, int]]  # (start, end) of each balanced top-level span
    open_start: int | None  # start of a top-level span still open at the end of the text
    cuts: list[int]  # in that open span: offsets where a prefix of whole items ends


def _scan(text: str) -> _Scan:
    """Finds the top-level ``[...]`` spans of ``text``, ignoring brackets inside quoted strings.

    When the text ends inside a span (output cut off), also records where each whole item of that
    span ends: after a closing quote, ``}`` or ``]`` back at the span's own level, and at each
    comma there. ``text[start:cut] + "]"`` is then a list of the items that arrived whole.
    """
    spans, cuts = [], []
    depth, braces, start, quote, escaped = 0, 0, 0, "", False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote or (ch == "\n" and quote == "'"):
                if depth == 1 and not braces and ch == quote:
                    cuts.append(i + 1)  # a string item arrived whole
                quote = ""  # a newline ends a stray apostrophe ("don't") as a quote
            continue
        if ch in '"\u201c' and depth:
            quote = '"' if ch == '"' else "\u201d"
        elif ch == "'" and depth and text[i - 1 : i] in ("[", ",", " ", "\n", "\t"):
            quote = "'"
        elif ch == "[":
            if depth == 0:
                start, cuts, braces = i, [], 0
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
            if depth == 0:
                spans.append((start, i + 1))
            elif depth == 1 and not braces:
                cuts.append(i + 1)  # a nested list item closed
        elif ch == "{" and depth:
            braces += 1
        elif ch == "}" and braces:
            braces -= 1
            if depth == 1 and not braces:
                cuts.append(i + 1)  # an object item ({"rule": ...}) closed
        elif ch == "," and depth == 1 and not braces:
            cuts.append(i)  # everything before a top-level comma is whole
    return _Scan(spans, start if depth else None, cuts)


def bracket_spans(text: str) -> list[str]:
    """Every top-level ``[...]`` span of ``text`` whose brackets balance, in order of appearance.

    Brackets inside quoted strings do not count, so ``["use [brackets] freely"]`` is one span.
    """
    return [text[a:b] for a, b in _scan(text).spans]


@dataclass
class _Candidate:
    rules: list[str]
    start: int  # offset in the answer, for the "final" label and for messages
    truncated: bool = False


def _candidates(text: str, offset: int = 0) -> list[_Candidate]:
    """The lists of rules among the bracket spans of ``text`` (an unclosed last one included)."""
    scan = _scan(text)
    found = []
    for a, b in scan.spans:
        rules = _decode(text[a:b])
        if rules is not None:
            found.append(_Candidate(rules, offset + a))
    if scan.open_start is not None:
        # Cut off: the longest prefix of whole items that reads as a list. A few earlier cuts are
        # tried when the last does not read (a comma inside a quote style the scanner missed);
        # not all of them, which would be quadratic on long unclosed prose like "[see a, b, ...".
        for cut in reversed(scan.cuts[-_CUT_TRIES:]):
            rules = _decode(text[scan.open_start : cut] + "]")
            if rules is not None:
                if rules:  # an unfinished list with no whole item is no answer
                    found.append(_Candidate(rules, offset + scan.open_start, truncated=True))
                break
    return found


def _choose(candidates: list[_Candidate], answer: str) -> tuple[_Candidate | None, list[str]]:
    """The answer among one tier's lists (rules in the module docstring), with warnings."""
    full = [c for c in candidates if c.rules]
    if not full:
        return (candidates[-1] if candidates else None), []
    labelled = [
        c for c in full if _FINAL_LABEL.search(answer[max(0, c.start - _LABEL_WINDOW) : c.start])
    ]
    chosen = (labelled or full)[-1]
    warnings = []
    if len(full) > 1:
        why = "the last one labelled final" if labelled else "the last one"
        warnings.append(
            f"{len(full)} non-empty lists in the answer; took {why} (at character {chosen.start})"
        )
    return chosen, warnings


def _list_items(text: str) -> list[str]:
    items = (m.group(1).strip().strip('"').strip() for m in _LIST_ITEM.finditer(text))
    return [item for item in items if item]


def parse_rules(text: str | None) -> ParsedRules:
    """The list of rules in a model's answer; see the module docstring for what is accepted."""
    if not text or not text.strip():
        return ParsedRules(error="empty answer")
    _, answer = split_reasoning(text)
    if not answer:
        return ParsedRules(error="the answer holds only reasoning (cut off inside <think>?)")

    def fenced() -> list[_Candidate]:
        found = []
        for fence in _FENCE.finditer(answer):
            body = fence.group(2).strip()
            rules = _decode(body)
            if rules is not None:
                found.append(_Candidate(rules, fence.start()))
            else:
                found += _candidates(fence.group(2), fence.start(2))
        return found

    def whole() -> list[_Candidate]:
        rules = _decode(answer)
        return [] if rules is None else [_Candidate(rules, 0)]

    empty = None  # the first all-empty tier's answer, used when no tier has a non-empty list
    for method, tier in (("fence", fenced), ("json", whole), ("span", lambda: _candidates(answer))):
        chosen, warnings = _choose(tier(), answer)
        if chosen is None:
            continue
        if chosen.truncated:
            warnings.insert(
                0,
                f"the list was cut off; kept its {len(chosen.rules)} complete item(s)",
            )
        parsed = ParsedRules(chosen.rules, method, truncated=chosen.truncated, warnings=warnings)
        if chosen.rules:
            return parsed
        empty = empty or parsed

    if empty is not None:
        return empty
    items = _list_items(answer)
    if items:
        preamble = answer[: _LIST_ITEM.search(answer).start()].translate(_SMART)
        refusal = _REFUSAL.search(preamble)
        if refusal is None:
            return ParsedRules(items, "list")
        return ParsedRules(
            error=f"the answer reads as a refusal ({refusal.group(0)!r}...), not a list of rules: "
            f"{_preview(answer)!r}"
        )
    return ParsedRules(error=f"no JSON array or list of rules found in: {_preview(answer)!r}")


def _preview(text: str) -> str:
    return " ".join(text.split())[:120]
