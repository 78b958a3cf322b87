"""Up-front checks of the reward terms' settings (``rewards.<term>``), the rule judge (``judge``)
and the rubric grader (``rubric``), with their LLM roles.

A stage that scores responses calls these from its ``check(cfg)``, before any model loads or any
call is paid for, so a number that cannot work (``rewards.length_penalty.norm=0``, a NaN scale,
``judge.llm.timeout=0``) stops the run with a :class:`~autorule.core.config.ConfigError` naming
the key as the command line spells it and the allowed range, instead of training on a wrong
reward or crashing mid-step. Every key is checked whether or not its term is in use: a value
that cannot work is a mistake either way. ``tests/unit/rewards/test_settings.py`` walks the
composed config so a new numeric key cannot go unchecked.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from autorule.core.config import ConfigError, check_choice, check_number

# What transformers' from_pretrained takes as a dtype name (auto = as saved).
MODEL_DTYPES = ("auto", "float32", "float16", "bfloat16")


def check_rewards(cfg: DictConfig) -> None:
    """Every known ``rewards.<term>`` section's numbers and names."""
    rewards = cfg.get("rewards") or {}

    def number(term: str, key: str, **allowed: Any) -> None:
        if term in rewards and key in rewards[term]:
            check_number(rewards[term][key], f"rewards.{term}.{key}", **allowed)

    def dtype(term: str) -> None:
        if term in rewards and "dtype" in rewards[term]:
            check_choice(str(rewards[term].dtype), f"rewards.{term}.dtype", MODEL_DTYPES)

    number("rm", "batch_size", low=1)
    dtype("rm")
    # The released formula (share - offset) x scale takes any finite offset and scale.
    number("rules", "offset", integer=False)
    number("rules", "scale", integer=False)
    number("length_penalty", "coef", integer=False, low=0)
    number("length_penalty", "norm", integer=False, low=0, low_open=True, meaning=" (a divisor)")
    number("length_penalty", "offset", integer=False)
    number("rubric", "format_coef", integer=False, low=0)
    number("feedback_rm", "batch_size", low=1)
    number("cloud", "max_new_tokens", low=1)
    number("cloud", "repetition_penalty", integer=False, low=0, low_open=True)
    number("cloud", "batch_size", low=1)
    dtype("cloud")


def check_judge(cfg: DictConfig) -> None:
    """The rule judge's settings and prompts (:func:`autorule.rewards.judge.check_settings`) and
    its LLM role ``judge.llm``."""
    from autorule import llm as llms
    from autorule.rewards.judge import check_settings

    check_settings(cfg)
    llms.check_role(cfg, "judge.llm")


def check_rubric(cfg: DictConfig) -> None:
    """The rubric grader's settings, its prompt's placeholders and its LLM role
    ``rubric.grader``."""
    from autorule import llm as llms
    from autorule.rewards.rubric import PROMPT_PLACEHOLDERS

    section = cfg.rubric
    check_number(section.debug_examples, "rubric.debug_examples", low=0)
    template(str(section.prompt), "rubric.prompt", PROMPT_PLACEHOLDERS)
    llms.check_role(cfg, "rubric.grader")


def template(text: str, key: str, placeholders: tuple[str, ...]) -> None:
    """Refuses a prompt template that lacks one of its ``{placeholders}``."""
    from autorule.rules.prompts import fill

    try:
        fill(text, key, **dict.fromkeys(placeholders, ""))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_scoring(cfg: DictConfig) -> None:
    """All of the above: what a stage that scores with reward terms checks up front."""
    check_rewards(cfg)
    check_judge(cfg)
    check_rubric(cfg)
