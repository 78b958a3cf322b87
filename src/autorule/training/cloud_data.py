"""How a CLoud reward model sees a prompt, an answer and a critique: texts, token ids, labels.

The sequence the reward is read from is::

    answer template (prompt, response) + critique opening (request) + critique + eos
    "<|user|>{prompt}<|assistant|>{response}" "<|user|>{request}<|assistant|>"   ...    <eos>

The critique is the model's reply to a request to critique the answer it has just read, so the
same text opens the critique when it is generated and when it is scored. The released CLoud code
writes the critique inside a user turn after a fixed lead-in under the Llama-3 chat template;
here the templates are config (``cloud.format``, defaults in the AutoRule paper's plain
``<|user|>...<|assistant|>`` style, as preprocess formats prompts) and are saved in the model's
config, so a trained model always scores with the format it learned. The classic baseline reads
its reward at ``answer template + eos``.

Critique SFT and the CLoud loss learn the critique tokens and the closing eos only
(:data:`IGNORE_INDEX` elsewhere). Segments are tokenized apart and joined as ids, so the label
mask is exact; the prefix gets the tokenizer's special tokens (Llama-3: BOS), the critique none.
A sequence longer than ``max_length`` loses the end of its critique (it still ends with eos, as
the CLoud code forces); a prefix that alone does not fit loses its start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from autorule.rules.prompts import fill
from autorule.training.cloud_loss import IGNORE_INDEX


@dataclass(frozen=True)
class CloudFormat:
    """The templates of ``cloud.format`` (see the module docstring)."""

    answer: str  # {prompt} and {response}
    critique: str  # {request}: opens the critique turn
    request: str  # what the critique turn asks for

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> CloudFormat:
        fmt = cls(str(values["answer"]), str(values["critique"]), str(values["request"]))
        fmt.answer_text("p", "r")  # fail at start-up on a template without its placeholders
        fmt.critique_opening()
        return fmt

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def answer_text(self, prompt: str, response: str) -> str:
        return fill(self.answer, "cloud.format.answer", prompt=prompt, response=response)

    def critique_opening(self) -> str:
        return fill(self.critique, "cloud.format.critique", request=self.request)

    def critique_prompt(self, prompt: str, response: str) -> str:
        """The text a critique continues (what the critique is generated from)."""
        return self.answer_text(prompt, response) + self.critique_opening()


@dataclass
class Encoded:
    """One tokenized sequence; ``truncated`` says that max_length cut it."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def join(
    prefix: Sequence[int], critique: Sequence[int] | None, eos: int, max_length: int
) -> Encoded:
    """``prefix + critique + [eos]`` cut to ``max_length``, with labels on critique and eos.

    ``critique=None`` (the classic model) gives ``prefix + [eos]`` with no label at all.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    prefix, cut = list(prefix), False
    if len(prefix) > max_length - 1:
        prefix, cut = prefix[len(prefix) - (max_length - 1) :], True
    if critique is None:
        return Encoded(prefix + [eos], [IGNORE_INDEX] * (len(prefix) + 1), cut)
    room = max_length - 1 - len(prefix)
    kept = list(critique)[:room]
    cut = cut or len(kept) < len(critique)
    return Encoded(prefix + kept + [eos], [IGNORE_INDEX] * len(prefix) + kept + [eos], cut)


def token_ids(tokenizer, texts: Sequence[str], special: bool) -> list[list[int]]:
    """Token ids of each text; ``special`` adds the tokenizer's special tokens (BOS)."""
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=special, verbose=False)["input_ids"]


def encode_all(
    tokenizer,
    fmt: CloudFormat,
    prompts: Sequence[str],
    responses: Sequence[str],
    critiques: Sequence[str] | None,
    max_length: int,
) -> list[Encoded]:
    """One :class:`Encoded` per (prompt, response[, critique]); ``critiques=None``: classic."""
    if critiques is None:
        prefixes = [fmt.answer_text(p, r) for p, r in zip(prompts, responses, strict=True)]
        return [
            join(ids, None, tokenizer.eos_token_id, max_length)
            for ids in token_ids(tokenizer, prefixes, special=True)
        ]
    prefixes = [fmt.critique_prompt(p, r) for p, r in zip(prompts, responses, strict=True)]
    prefix_ids = token_ids(tokenizer, prefixes, special=True)
    critique_ids = token_ids(tokenizer, list(critiques), special=False)
    return [
        join(p, c, tokenizer.eos_token_id, max_length)
        for p, c in zip(prefix_ids, critique_ids, strict=True)
    ]


def pad(rows: Sequence[Sequence[int]], value: int, length: int | None = None) -> list[list[int]]:
    """Rows right-padded with ``value`` to the longest (or ``length``)."""
    width = length if length is not None else max(len(r) for r in rows)
    return [list(r) + [value] * (width - len(r)) for r in rows]


def collate(
    sequences: Sequence[Encoded | Mapping[str, Sequence[int]]], pad_id: int
) -> dict[str, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    import torch

    ids = [s["input_ids"] if isinstance(s, Mapping) else s.input_ids for s in sequences]
    labels = [s["labels"] if isinstance(s, Mapping) else s.labels for s in sequences]
    return {
        "input_ids": torch.tensor(pad(ids, pad_id)),
        "attention_mask": torch.tensor(pad([[1] * len(r) for r in ids], 0)),
        "labels": torch.tensor(pad(labels, IGNORE_INDEX)),
    }


class PairCollator:
    """Rows of ``chosen_input_ids``, ``chosen_labels``, ``rejected_input_ids``,
    ``rejected_labels`` -> one batch of 2B sequences: every chosen one, then every rejected one
    (the order the CLoud trainer splits rewards in)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, Any]:
        sides = [
            {"input_ids": row[f"{side}_input_ids"], "labels": row[f"{side}_labels"]}
            for side in ("chosen", "rejected")
            for row in rows
        ]
        return collate(sides, self.pad_id)
