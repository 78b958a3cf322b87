"""Reward-model scores of responses, read as the rm stage trained them.

Each text is the formatted prompt, the response and eos, tokenized with the tokenizer's own special
tokens (TRL's RewardTrainer joins ``prompt + chosen`` and appends eos the same way); the score is
the sequence-classification head where transformers pools it (the last token that is not the pad
token: eos when ``model.pad_token`` differs from it). A text longer than ``max_length`` keeps its
first ``max_length - 1`` tokens and eos, so it is still scored at eos (TRL drops such pairs from
training; here every response must get a score).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def rm_scores(
    model_dir: Path | str,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    device: str = "auto",
    pad_token: str | None = None,
) -> list[float]:
    """The reward model's score of each ``prompt + response``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from autorule.data.models import ensure_pad_token, resolve_device

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    device = resolve_device(device)
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(str(model_dir)), pad_token)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).to(device).eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        texts = [
            p + r + tokenizer.eos_token
            for p, r in zip(
                prompts[start : start + batch_size],
                responses[start : start + batch_size],
                strict=True,
            )
        ]
        ids = [tokenizer(t)["input_ids"] for t in texts]
        if max_length:
            ids = [x if len(x) <= max_length else x[: max_length - 1] + [eos] for x in ids]
        width = max(len(x) for x in ids)
        pad = tokenizer.pad_token_id
        # Right padding: the model pools at the last token that is not the pad token.
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask).logits
        scores.extend(float(v) for v in logits[:, 0].tolist())
    return scores
