"""The CLoud reward model's losses and where its score is read (pure torch, no model).

A CLoud reward model (Ankner et al. 2024, arXiv 2408.11791) reads its reward at the last token of
``prompt + answer + critique + eos`` and trains on

    loss = -log sigmoid(r_chosen - r_rejected) + lambda x CE(critique tokens)

the Bradley-Terry loss averaged over pairs plus the language-model loss of the critique tokens of
both answers, averaged over those tokens together (the released CLoud code takes one
cross-entropy over the chosen and rejected critiques). lambda is 1.25 at 8B and 0.75 at 70B in the
paper. The classic baseline is the first term alone.

Labels follow the transformers convention: ``labels[b, t]`` is the token at position ``t`` when
it is a critique token, else ``IGNORE_INDEX``; position ``t - 1`` predicts it, so the logits are
shifted by one against the labels here, as a causal LM's own loss does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label of a token that is not learned (prompt, answer, padding)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended (non-pad) position of each row, for left or right padding."""
    if attention_mask.dim() != 2:
        raise ValueError(
            f"attention_mask must be (batch, length), got {tuple(attention_mask.shape)}"
        )
    if not bool((attention_mask.sum(dim=-1) > 0).all()):
        raise ValueError("every row needs at least one attended token")
    length = attention_mask.shape[-1]
    # argmax finds the first maximum: on the flipped mask, the last 1 of the row.
    return length - 1 - attention_mask.flip(-1).long().argmax(dim=-1)


def at_last_token(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``values[b, last_token_index[b]]`` for (batch, length, ...) values."""
    rows = torch.arange(values.shape[0], device=values.device)
    return values[rows, last_token_index(attention_mask).to(values.device)]


def critique_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, targets)``: the (batch, length - 1) positions whose next token is a critique
    token, and those tokens (N,). ``values[:, :-1][keep]`` are the positions that predict them."""
    shifted = labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    return keep, shifted[keep]


def select_critique(
    values: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (or hidden states) at the positions predicting critique tokens, and the targets."""
    keep, targets = critique_positions(labels)
    return values[:, :-1][keep], targets


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of -log sigmoid(r_chosen - r_rejected)."""
    return -F.logsigmoid(chosen.float() - rejected.float()).mean()


def critique_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the selected (N, vocab) logits on their (N,) targets; zero (with a
    gradient path) when a batch holds no critique token, e.g. critiques cut away by max_length."""
    if targets.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets)


@dataclass
class CloudLoss:
    """The loss and its two parts, for logging."""

    total: torch.Tensor
    bradley_terry: torch.Tensor
    critique_lm: torch.Tensor | None  # None in classic mode


def cloud_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    critique_logits: torch.Tensor | None = None,
    critique_targets: torch.Tensor | None = None,
    lm_weight: float = 0.0,
) -> CloudLoss:
    """BT loss + ``lm_weight`` x critique LM loss; the BT loss alone without critique logits."""
    bt = bradley_terry_loss(chosen, rejected)
    if critique_logits is None:
        return CloudLoss(bt, bt, None)
    if critique_targets is None:
        raise ValueError("critique logits need their targets")
    lm = critique_lm_loss(critique_logits, critique_targets)
    return CloudLoss(bt + float(lm_weight) * lm, bt, lm)
