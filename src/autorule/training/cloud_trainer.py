"""The transformers ``Trainer`` with the CLoud loss (TRL has no CLoud trainer).

Each batch holds B preference pairs as 2B sequences (:class:`~autorule.training.cloud_data.
PairCollator`: every chosen sequence, then every rejected one). ``compute_loss`` runs the reward
model once over all of them and returns :func:`~autorule.training.cloud_loss.cloud_loss`: the
Bradley-Terry loss, plus ``lm_weight`` x the critique LM loss when the sequences carry critiques
(``with_critiques``; the classic baseline has none). The parts and the pairwise accuracy of the
batches since the last log are logged beside the loss (``bt_loss``, ``lm_loss``,
``pair_accuracy``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from transformers import Trainer

from autorule.training.cloud_loss import cloud_loss


class CloudTrainer(Trainer):
    """``Trainer`` whose loss is the CLoud loss (or, without critiques, the BT loss)."""

    def __init__(self, *args: Any, lm_weight: float, with_critiques: bool, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lm_weight = float(lm_weight)
        self.with_critiques = bool(with_critiques)
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            lm_labels=inputs["labels"] if self.with_critiques else None,
        )
        chosen, rejected = out.rewards.chunk(2)
        loss = cloud_loss(
            chosen, rejected, out.critique_logits, out.critique_targets, self.lm_weight
        )
        if model.training:
            self._add("bt_loss", loss.bradley_terry.item())
            if loss.critique_lm is not None:
                self._add("lm_loss", loss.critique_lm.item())
            self._add("pair_accuracy", (chosen > rejected).float().mean().item())
        if return_outputs:
            return loss.total, {"rewards": torch.stack([chosen, rejected], dim=-1)}
        return loss.total

    def _add(self, name: str, value: float) -> None:
        self._sums[name] += value
        self._counts[name] += 1

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:  # a training log: add the parts averaged since the last one
            for name, total in self._sums.items():
                logs[name] = round(total / self._counts[name], 4)
            self._sums.clear()
            self._counts.clear()
        super().log(logs, *args, **kwargs)
