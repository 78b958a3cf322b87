"""Reward terms by name: one registry maps a name to a factory (as open-r1's reward functions).

A factory takes a :class:`RewardContext` and returns a reward function with TRL GRPOTrainer's
signature, ``f(prompts, completions, **kwargs) -> list[float]``, named after its term
(``f.__name__``). Register one with ``@register("name")`` in a module that
``autorule.rewards`` imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


@dataclass
class RewardContext:
    """What reward factories may need besides the config."""

    cfg: DictConfig  # the composed config (terms read rewards.<name>)
    rm_folder: Path | None = None  # the rm artifact
    rules: list[str] = field(default_factory=list)  # the rule set
    device: str | None = None  # where models run; None = cuda when available, else cpu
    tokenizer: Any = None  # the policy tokenizer


Factory = Callable[[RewardContext], Callable[..., list[float]]]
REWARDS: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    """Registers a reward factory under ``name`` (a decorator)."""

    def add(factory: Factory) -> Factory:
        if name in REWARDS and REWARDS[name] is not factory:
            raise ValueError(f"reward term {name!r} is registered twice")
        REWARDS[name] = factory
        return factory

    return add
