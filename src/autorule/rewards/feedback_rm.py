"""The ``feedback_rm`` reward term: the raw score of a reward model trained on ratings or rankings.

    from autorule.rewards.registry import REWARDS, RewardContext
    reward = REWARDS["feedback_rm"](RewardContext(cfg))
    reward(prompts, completions)  # -> one float per completion

Settings: ``rewards.feedback_rm`` (conf/stage/feedback_rm.yaml). The model is the folder
``rewards.feedback_rm.model`` names, or else ``model/`` of this config's feedback_rm artifact
(``feedback_rm.protocol`` picks which of the two). Prompts formatted for the policy in
``preprocess.plain_template`` are unwrapped to the bare request, which the model reads in that
template again (the layout it was trained on).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autorule.rewards.cloud import bare_prompt, response_text
from autorule.rewards.registry import RewardContext, register, term_model

NAME = "feedback_rm"


def text(template: str, prompt: str, answer: str, eos: str) -> str:
    """What the model reads: the formatted request, the answer, eos (the rm stage's layout)."""
    return template.replace("{prompt}", prompt) + answer + eos


def score_texts(model, tokenizer, texts: list[str], batch_size: int = 16) -> list[float]:
    """The model's score of each text (batched, no gradients)."""
    import torch

    model.eval()
    out: list[float] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                return_tensors="pt",
                add_special_tokens=False,
            ).to(device)
            out.extend(model(**batch).logits.squeeze(-1).float().tolist())
    return out


@register(NAME, stage="feedback_rm", model_key="rewards.feedback_rm.model")
def feedback_rm_term(context: RewardContext):
    """The feedback reward model's raw score of each completion."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from autorule.data.models import ensure_pad_token

    folder = term_model(context, NAME)
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(folder))
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    model.to(context.resolved_device())
    template = str(context.cfg.preprocess.plain_template)
    batch_size = int(context.cfg.rewards.feedback_rm.batch_size)
    eos = tokenizer.eos_token or ""

    def feedback_rm(prompts: Sequence, completions: Sequence, **_: Any) -> list[float]:
        texts = [
            text(template, bare_prompt(p, template), response_text(c), eos)
            for p, c in zip(prompts, completions, strict=True)
        ]
        return score_texts(model, tokenizer, texts, batch_size)

    feedback_rm.__name__ = feedback_rm.__qualname__ = NAME
    return feedback_rm
