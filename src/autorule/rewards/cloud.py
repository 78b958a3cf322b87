"""The ``cloud`` reward term: a CLoud reward model critiques each response, then scores it.

    from autorule.rewards.registry import REWARDS, RewardContext
    reward = REWARDS["cloud"](RewardContext(cfg, rm_folder=None, rules=[]))
    reward(prompts, completions)  # -> one float per completion

Settings: ``rewards.cloud`` (conf/stage/cloud.yaml). The model is the folder
``rewards.cloud.model`` names, or else the ``model/`` of this config's cloud artifact (which must
be complete). Each call generates the critiques greedily and returns the model's raw rewards
(:func:`autorule.training.cloud_model.predict_reward`); a classic model scores without critique.

GRPO hands prompts formatted for the policy: a prompt in ``rewards.cloud.prompt_template`` is
shown to the CLoud model as the bare request it wraps, because the model fills its own format in.
Conversational prompts and completions (message lists) give the last user message and the last
message's content.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autorule.rewards.registry import RewardContext, register, term_model

NAME = "cloud"


def bare_prompt(prompt: Any, template: str | None) -> str:
    """The request inside a prompt formatted with ``template`` (``...{prompt}...``); a message
    list gives its last user message; anything else is returned as it is."""
    if isinstance(prompt, (list, tuple)):
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        return str(users[-1] if users else prompt[-1]["content"])
    text = str(prompt)
    if template and "{prompt}" in template:
        head, tail = template.split("{prompt}", 1)
        if text.startswith(head) and text.endswith(tail) and len(text) >= len(head) + len(tail):
            return text[len(head) : len(text) - len(tail)]
    return text


def response_text(completion: Any) -> str:
    """A completion as text (a message list gives its last message's content)."""
    if isinstance(completion, (list, tuple)):
        return str(completion[-1]["content"]) if completion else ""
    return str(completion)


@register(NAME, stage="cloud", model_key="rewards.cloud.model")
def cloud_term(context: RewardContext):
    """The CLoud model's reward of each completion, critique first."""
    import torch

    from autorule.training.cloud_model import GenerationSettings, load, predict_reward

    section = context.cfg.rewards.cloud
    device = context.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load(term_model(context, NAME), device, str(section.dtype))
    settings = GenerationSettings(
        max_new_tokens=int(section.max_new_tokens),
        repetition_penalty=float(section.repetition_penalty),
        batch_size=int(section.batch_size),
        engine="hf",  # vLLM would compete with the policy's training for the GPU
    )
    template = section.prompt_template

    def cloud(prompts: Sequence, completions: Sequence, **_: Any) -> list[float]:
        rewards, _critiques = predict_reward(
            model,
            tokenizer,
            [bare_prompt(p, template) for p in prompts],
            [response_text(c) for c in completions],
            settings,
        )
        return rewards

    cloud.__name__ = cloud.__qualname__ = NAME
    return cloud
