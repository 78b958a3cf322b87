"""Timing of a GRPO step's reward phase, for the GRPO-step benchmark and its default-tier test.

:class:`RewardTimer` wraps what the grpo stage builds, without changing the stage: each reward
term (its time inside every call, optionally after a scripted extra delay) and TRL's
``GRPOTrainer._calculate_rewards`` (the reward phase: every term of one generation batch, as the
trainer runs them). Its ``callback`` records each optimizer step's wall time.
"""

from __future__ import annotations

import time
from collections import defaultdict

from transformers import TrainerCallback

from autorule.rewards import registry


class RewardTimer:
    def __init__(self, monkeypatch, delays: dict[str, float] | None = None):
        from trl import GRPOTrainer

        self.phases: list[float] = []
        self.terms: dict[str, list[float]] = defaultdict(list)
        self.steps: list[float] = []
        delays = dict(delays or {})
        build, calculate = registry.build_reward_funcs, GRPOTrainer._calculate_rewards

        def timed_build(names, context):
            return [
                self._timed(func, delays.get(func.__name__, 0.0)) for func in build(names, context)
            ]

        def timed_calculate(trainer, *args, **kwargs):
            start = time.perf_counter()
            out = calculate(trainer, *args, **kwargs)
            self.phases.append(time.perf_counter() - start)
            return out

        monkeypatch.setattr(registry, "build_reward_funcs", timed_build)
        monkeypatch.setattr(GRPOTrainer, "_calculate_rewards", timed_calculate)
        timer = self

        class StepTimes(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._step_start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.steps.append(time.perf_counter() - timer._step_start)

        self.callback = StepTimes()

    def _timed(self, func, delay: float):
        def run(*args, **kwargs):
            start = time.perf_counter()
            if delay:
                time.sleep(delay)  # a scripted slow term (a bigger model, a remote service)
            out = func(*args, **kwargs)
            self.terms[func.__name__].append(time.perf_counter() - start)
            return out

        run.__dict__.update(func.__dict__)
        return registry.named(run, func.__name__)
