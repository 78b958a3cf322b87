"""Reward terms for GRPO and evaluation, by name, and the rule judge.

    from autorule.rewards import RewardContext, build_reward_funcs
    funcs = build_reward_funcs(["rm", "rules"], RewardContext(cfg, rm_folder, rules))
    funcs[1](prompts, completions)  # -> one float per completion

See :mod:`autorule.rewards.registry` (the contract), :mod:`autorule.rewards.terms` (the built-in
terms), :mod:`autorule.rewards.judge` (the rule judge), :mod:`autorule.rewards.rubric` (the rubric
grader) and docs/rewards.md.
"""

from autorule.rewards import (  # noqa: F401 - registers the built-in terms
    cloud,
    feedback_rm,
    rubric,
    terms,
)
from autorule.rewards.judge import JudgeResult, RuleJudge
from autorule.rewards.registry import (
    REWARDS,
    RewardContext,
    RewardFunc,
    build_reward_funcs,
    close_all,
    register,
)

__all__ = [
    "REWARDS",
    "JudgeResult",
    "RewardContext",
    "RewardFunc",
    "RuleJudge",
    "build_reward_funcs",
    "close_all",
    "register",
]
