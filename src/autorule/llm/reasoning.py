"""Separating a reasoning model's inline chain of thought from its answer (pure string work)."""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


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
