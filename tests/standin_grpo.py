"""A stand-in for the grpo stage in the evaluation stages' end-to-end tests.

It trains nothing: from the sft artifact it writes the layout the generate, evaluate and report
stages read from a GRPO artifact (``model/``, ``log_history.jsonl`` with TRL's keys,
``rule_satisfaction.json``, ``metrics.json``, ``checkpoints/checkpoint-<step>/``), with a log in
which the RM reward keeps rising after step 4 while the rule satisfaction falls. Used as
``+stage_modules.grpo=standin_grpo``.
"""

import json
import shutil

from autorule.core.artifacts import StageJob
from autorule.core.stage import StageSpec
from autorule.data.models import resolve

SPEC = StageSpec(name="grpo", inputs=("sft",), keys=("standin_grpo",))
RULES = ["The reply answers the question.", "The reply is polite."]
STEPS = 8
PEAK = 4  # the rule satisfaction peaks here; the RM reward keeps rising to the end


def log_rows() -> list[dict]:
    rows = []
    for step in range(1, STEPS + 1):
        rm = 0.2 * step
        satisfaction = [
            0.4 + 0.1 * min(step, PEAK) - 0.1 * max(0, step - PEAK) + d for d in (0, 0.1)
        ]
        rules = sum(satisfaction) / len(satisfaction)
        rows.append(
            {
                "step": step,
                "loss": 0.01 * step,
                "reward": rm + rules,
                "rewards/rm/mean": rm,
                "rewards/rules/mean": rules,
                "rewards/length_penalty/mean": -0.01 * step,
                "completions/mean_length": 20.0 + step,
                "kl": 0.005 * step,
                **{f"rules/{i}": value for i, value in enumerate(satisfaction)},
            }
        )
    return rows


def perturbed(source, target, seed: int) -> None:
    """``source``'s model with seeded noise on its weights (a policy that answers differently)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)


def run(cfg):
    with StageJob(cfg, SPEC.name) as job:
        if job.done:
            return job.path
        sft = job.input("sft") / "model"
        # Three policies that answer differently: the untrained base model, the sft model moved
        # a little, and a little more.
        shutil.copytree(resolve(cfg, "policy"), job.workdir / "checkpoints" / "checkpoint-2")
        perturbed(sft, job.workdir / "checkpoints" / "checkpoint-4", seed=4)
        perturbed(sft, job.workdir / "model", seed=STEPS)
        rows = log_rows()
        with open(job.workdir / "log_history.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        start, end = rows[0], rows[-1]
        satisfaction = [
            {"index": i, "rule": rule, "start": start[f"rules/{i}"], "end": end[f"rules/{i}"]}
            for i, rule in enumerate(RULES)
        ]
        (job.workdir / "rule_satisfaction.json").write_text(json.dumps(satisfaction))
        (job.workdir / "metrics.json").write_text(json.dumps({"global_step": STEPS}))
        return job.commit({"steps": STEPS})
