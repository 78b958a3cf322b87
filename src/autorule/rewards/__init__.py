"""Reward terms for GRPO and evaluation, by name (:mod:`autorule.rewards.registry`)."""

from autorule.rewards import cloud  # noqa: F401 - registers the cloud term
from autorule.rewards.registry import REWARDS, RewardContext, register

__all__ = ["REWARDS", "RewardContext", "register"]
