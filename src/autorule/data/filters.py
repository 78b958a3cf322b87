"""Pure data rules of the preprocess stage: the length-and-score filter and the MT-Bench split.

The filter comes from PAR (Fu et al., 2025) as AutoRule applies it to its SFT, reward-model and RL
data: a row is kept only if the prompt, the final chosen message and the final rejected message
are each shorter than 512 policy tokens, the chosen score is strictly higher than the rejected
score, and neither answer mentions "confidence" (UltraFeedback answers that end in a
self-reported confidence are an artefact of its generation prompts).

Token counts are of each text alone, or, with ``count_special_tokens``, as the released AutoRule
code took them: ``len(tokenizer.encode(text))``, which for Llama-3 includes the BOS token, so a text
of 511 content tokens already reaches 512 and is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Checked in this order; a dropped row is counted under the first reason that applies, so the
# per-reason counts add up to the number of rows dropped.
REASONS = ("score", "confidence", "prompt_length", "chosen_length", "rejected_length")


@dataclass(frozen=True)
class FilterSettings:
    max_tokens: int = 512  # a text of exactly this many tokens is dropped ("under 512")
    count_special_tokens: bool = False  # the tokens the tokenizer adds (BOS) count too
    length: bool = True
    score: bool = True
    no_confidence: bool = True


def cheap_reason(
    score_chosen: float, score_rejected: float, chosen: str, rejected: str, s: FilterSettings
) -> str | None:
    """The first non-length reason to drop a row, or None (no tokenizer needed)."""
    if s.score and not score_chosen > score_rejected:
        return "score"
    if s.no_confidence and ("confidence" in chosen.lower() or "confidence" in rejected.lower()):
        return "confidence"
    return None


def length_reason(
    prompt_tokens: int, chosen_tokens: int, rejected_tokens: int, s: FilterSettings
) -> str | None:
    """The first length reason to drop a row, or None."""
    if not s.length:
        return None
    for reason, n in (
        ("prompt_length", prompt_tokens),
        ("chosen_length", chosen_tokens),
        ("rejected_length", rejected_tokens),
    ):
        if n >= s.max_tokens:
            return reason
    return None


def filter_rows(
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    score_chosen: Sequence[float],
    score_rejected: Sequence[float],
    count_tokens: Callable[[list[str]], list[int]],
    s: FilterSettings,
) -> tuple[list[int], dict[str, int]]:
    """Indices of the rows to keep and the number dropped per reason.

    ``count_tokens`` maps a batch of texts to their token counts (or to bounds on them that fall
    on the same side of ``max_tokens``). The conditions are checked in order, each on the rows
    still kept: a row dropped for its score or its prompt's length has no answer tokenized.
    """
    dropped = dict.fromkeys(REASONS, 0)
    kept = []
    for i in range(len(prompts)):
        reason = cheap_reason(score_chosen[i], score_rejected[i], chosen[i], rejected[i], s)
        if reason:
            dropped[reason] += 1
        else:
            kept.append(i)
    if not s.length:
        return kept, dropped
    for reason, texts in (
        ("prompt_length", prompts),
        ("chosen_length", chosen),
        ("rejected_length", rejected),
    ):
        counts = count_tokens([texts[i] for i in kept])
        short = [i for i, n in zip(kept, counts, strict=True) if n < s.max_tokens]
        dropped[reason] += len(kept) - len(short)
        kept = short
    return kept, dropped


def mt_question_split(
    first: int = 81,
    last: int = 160,
    block: int = 10,
    train_per_block: int = 5,
    first_question_only: bool = False,
) -> tuple[list[int], list[int]]:
    """Train and test MT-Bench question ids.

    Questions ``first..last`` form category blocks of ``block``; the first ``train_per_block`` of
    each block train and the rest test (81-85 train, 86-90 test, ...). ``first_question_only``
    reproduces the range bug of AutoRule's released code, whose question ranges keep only their
    first question: 8 training questions (81, 91, ... 151) and 8 test questions (86, 96, ... 156).
    """
    if not 0 < train_per_block < block:
        raise ValueError(
            f"train_per_block must be between 1 and {block - 1}, got {train_per_block}"
        )
    train, test = [], []
    for start in range(first, last + 1, block):
        ids = list(range(start, min(start + block, last + 1)))
        train += ids[:1] if first_question_only else ids[:train_per_block]
        test += ids[train_per_block:][:1] if first_question_only else ids[train_per_block:]
    return train, test


def format_prompt(prompt: str, template: str) -> str:
    """The paper's plain prompt format; ``template`` holds a ``{prompt}`` placeholder."""
    return template.replace("{prompt}", prompt)
