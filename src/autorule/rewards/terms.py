"""The built-in reward terms: ``rm``, ``rules``, ``length_penalty``.

Each is a pure formula (tested on literal numbers) and a factory registered by name that binds it
to models and config (``rewards.<name>`` in conf/rewards.yaml):

* ``rm``: the rm artifact's reward model scores prompt + response + eos, the text the rm stage
  trained on (TRL's RewardTrainer joins the formatted prompt and the answer and appends eos),
  normalised as (r - reward_mean) / reward_std with the held-out statistics the rm stage stored
  (the AutoRule paper normalises the learned reward this way).
* ``rules``: the judge (:mod:`autorule.rewards.judge`) checks every response against every rule;
  reward = (share satisfied - offset) x scale, the released AutoRule code's formula (offset 0.75,
  scale 10).
* ``length_penalty``: -relu(coef x L / norm - offset), L the response's length in policy tokens;
  the AutoRule paper's length-penalty baseline uses coef 0.5, norm 300, offset 0.5.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autorule.rewards.judge import RuleJudge, StepGuard, _as_text
from autorule.rewards.registry import MetricLog, RewardContext, named, register

# --------------------------------------------------------------------------------------------
# Formulas


def normalise(scores: Sequence[float], mean: float, std: float) -> list[float]:
    """(r - mean) / std for each score."""
    if not std > 0:
        raise ValueError(f"reward_std must be positive, got {std}")
    return [(float(r) - mean) / std for r in scores]


def rules_reward(share: float, offset: float = 0.75, scale: float = 10.0) -> float:
    """(share of rules satisfied - offset) x scale."""
    return (float(share) - offset) * scale


def length_penalty(
    length: int, coef: float = 0.5, norm: float = 300.0, offset: float = 0.5
) -> float:
    """-relu(coef x length / norm - offset): 0 up to norm x offset / coef tokens, then linear."""
    return min(0.0, offset - coef * length / norm)


# --------------------------------------------------------------------------------------------
# rm


def rm_statistics(rm_folder: Path) -> tuple[float, float]:
    """``reward_mean`` and ``reward_std`` from the rm artifact's metrics.json."""
    path = Path(rm_folder) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the reward term rm needs the rm artifact")
    metrics = json.loads(path.read_text())
    keys = ("reward_mean", "reward_std")
    missing = [k for k in keys if not isinstance(metrics.get(k), (int, float))]
    if missing:
        raise ValueError(f"{path} has no numeric {missing}: re-run the rm stage")
    mean, std = float(metrics["reward_mean"]), float(metrics["reward_std"])
    if not std > 0:
        raise ValueError(f"{path}: reward_std is {std}; the reward cannot be normalised with it")
    return mean, std


@register("rm", stage="rm")
def rm_term(context: RewardContext):
    """The rm artifact's normalised reward (settings: ``rewards.rm``)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from autorule.data.models import load_tokenizer

    rm_folder = context.rm_folder or context.inputs.get("rm")
    if rm_folder is None:
        raise ValueError("the reward term rm needs the rm artifact (RewardContext.rm_folder)")
    section = context.cfg.rewards.rm
    mean, std = rm_statistics(rm_folder)
    model_dir = str(Path(rm_folder) / "model")
    device = context.resolved_device()
    dtype = str(section.dtype)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, dtype=dtype if dtype == "auto" else getattr(torch, dtype)
    )
    model = model.to(device).eval()
    tokenizer = load_tokenizer(context.cfg, name_or_path=model_dir)
    tokenizer.padding_side = "right"  # as TRL's preference collator
    eos = tokenizer.eos_token
    batch_size = max(1, int(section.batch_size))
    log = MetricLog()
    state = {"model": model}

    def scores(texts: list[str]) -> list[float]:
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(
                    texts[start : start + batch_size], padding=True, return_tensors="pt"
                ).to(device)
                out.extend(state["model"](**batch).logits[:, 0].float().cpu().tolist())
        return out

    def rm(prompts, completions, **kwargs) -> list[float]:
        texts = []
        for prompt, completion in zip(prompts, completions, strict=True):
            text = _as_text(prompt) + _as_text(completion)
            texts.append(text if text.endswith(eos) else text + eos)  # as RewardTrainer adds it
        raw = scores(texts)
        log.add({"rm/raw": float(np.mean(raw))}, len(raw), kwargs.get("log_metric"))
        return normalise(raw, mean, std)

    def close() -> None:
        state["model"] = None

    rm.metrics, rm.close = log.pop, close
    return named(rm, "rm")


# --------------------------------------------------------------------------------------------
# rules


@register("rules", sections=("judge",), rules=True)
def rules_term(context: RewardContext):
    """The judge's share of rules satisfied (settings: ``rewards.rules`` and ``judge``).

    Metrics per call: ``rules/<i>`` (the share of responses satisfying rule i, or its mean p(Yes)
    with ``judge.soft``), ``judge/unparsed``, ``judge/failed`` and ``judge/cut`` (shares of
    verdicts, and of prompts cut to the judge's budget). Each call is one training step's
    verdicts, watched by :class:`~autorule.rewards.judge.StepGuard` (failed calls stop the step
    before its update). A rule too long for the judge's budget is refused here, when the rule set
    is read.
    The keyword ``per_rule``, a callable, gets the (responses x rules) satisfaction array.
    """
    rules = [str(r) for r in context.rules]
    if not rules:
        raise ValueError("the reward term rules needs a non-empty rule set (RewardContext.rules)")
    section = context.cfg.rewards.rules
    offset, scale = float(section.offset), float(section.scale)
    judge = RuleJudge(context.cfg, device=context.device)
    judge.check_rules(rules, context.rules_source)
    guard = StepGuard(judge)
    log = MetricLog()

    def rules_fn(prompts, completions, **kwargs) -> list[float]:
        result = judge.judge(completions, rules, prompts=prompts)
        guard.check(result)
        satisfied = result.satisfied(judge.soft)
        metrics = {f"rules/{i}": float(rate) for i, rate in enumerate(satisfied.mean(axis=0))}
        metrics["judge/unparsed"] = result.unparsed / result.size
        metrics["judge/failed"] = result.failed / result.size
        metrics["judge/cut"] = result.cut / result.size
        log.add(metrics, len(completions), kwargs.get("log_metric"))
        if kwargs.get("per_rule") is not None:  # each response's verdicts (the reward server)
            kwargs["per_rule"](satisfied)
        return [rules_reward(share, offset, scale) for share in satisfied.mean(axis=1)]

    rules_fn.metrics, rules_fn.close = log.pop, judge.close
    rules_fn.judge, rules_fn.rules = judge, rules  # for per-rule tables and evaluation
    return named(rules_fn, "rules")


# --------------------------------------------------------------------------------------------
# length_penalty


@register("length_penalty")
def length_penalty_term(context: RewardContext):
    """The length-penalty baseline (settings: ``rewards.length_penalty``).

    L is counted with the policy tokenizer (``RewardContext.tokenizer``) on the response text;
    without one, from the ``completion_ids`` TRL passes (which include the closing eos).
    """
    section = context.cfg.rewards.length_penalty
    coef, norm, offset = float(section.coef), float(section.norm), float(section.offset)
    tokenizer = context.tokenizer
    log = MetricLog()

    def lengths(completions, completion_ids) -> list[int]:
        if tokenizer is not None:
            texts = [_as_text(c) for c in completions]
            return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        if completion_ids is not None:
            return [len(ids) for ids in completion_ids]
        raise ValueError(
            "the reward term length_penalty needs the policy tokenizer (RewardContext.tokenizer) "
            "or completion_ids"
        )

    def penalty(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        counts = lengths(completions, completion_ids)
        log.add({"length/tokens": float(np.mean(counts))}, len(counts), kwargs.get("log_metric"))
        return [length_penalty(n, coef, norm, offset) for n in counts]

    penalty.metrics = log.pop
    return named(penalty, "length_penalty")
