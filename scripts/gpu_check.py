"""Checks a GPU machine in one command: ``make gpu-check`` (``bash scripts/gpu_check.sh``).

Runs on one GPU, in about 8 minutes at most, and prints a short table; writes ``gpu_check.json``
(``--out``). The parts, each on its own and timed:

* ``pipeline_bf16``: the tiny pipeline (preprocess, extract, sft, rm, grpo, generate, evaluate,
  report) with every training stage in bf16;
* ``sft_zero2`` / ``rm_zero3``: sft under DeepSpeed ZeRO-2 and rm under ZeRO-3, through
  ``accelerate launch`` on one process, then the ZeRO-3 reward model reloaded with
  ``from_pretrained`` and scoring a text;
* ``grpo_zero3``: tiny GRPO in bf16 under ZeRO-3, with its time per step;
* ``vllm``: the generate stage on the vLLM backend and GRPO with ``grpo.use_vllm=true``, when
  vLLM is installed (skipped, and said so, when it is not);
* ``judge``: the rule judge's pairs/s on the GPU in logprob and generate modes (tiny judge);
* ``mfu``: SFT tokens/s and MFU of a ~0.5B random-initialised Llama on UltraFeedback-length rows,
  packed and padded (formula: :mod:`autorule.training.throughput`).

``--dry-run`` runs every part on CPU without a GPU, small: the stage commands are composed and
run with ``dry_run=true`` (launch commands printed, nothing trained), the judge and the MFU
measurement run a few steps of tiny models. The default test tier runs it, so the check cannot
rot while no GPU is at hand.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

# The tiny profile's training stages in bf16.
BF16 = [f"{stage}.precision=bf16" for stage in ("sft", "rm", "grpo")]
GRPO_STEPS = 3
# ~0.5B parameters: Llama-3's vocabulary (128,256, tied embeddings) and 24 layers of width 1,024.
LLAMA_05B = dict(hidden=1024, layers=24, heads=16, kv_heads=8, intermediate=4096, vocab=128256)
LLAMA_DRY = dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512)


def stage_commands(root: Path) -> dict[str, list[list[str]]]:
    """The autorule commands (override lists) of the stage parts."""
    at = f"paths.root={root}"
    return {
        "pipeline_bf16": [["stage=pipeline", at, *BF16]],
        # force: the DeepSpeed setting does not enter the artifact's hash, so without it the
        # pipeline's bf16 artifacts would count as done and nothing would train under ZeRO.
        "sft_zero2": [["stage=sft", at, "sft.deepspeed=zero2", "sft.precision=bf16", "force=true"]],
        "rm_zero3": [["stage=rm", at, "rm.deepspeed=zero3", "rm.precision=bf16", "force=true"]],
        "grpo_zero3": [
            [
                "stage=grpo",
                at,
                "grpo.deepspeed=zero3",
                "grpo.precision=bf16",
                f"grpo.max_steps={GRPO_STEPS}",
                "force=true",
            ]
        ],
        "vllm": [
            ["stage=generate", at, "generate.backend=vllm"],
            ["stage=grpo", at, "grpo.use_vllm=true", "grpo.max_steps=2", *BF16],
        ],
    }


def run_commands(commands: list[list[str]], dry: bool, log: Path) -> None:
    """Runs autorule commands: as processes on a GPU (each on its own, output to ``log``); in the
    dry mode composed and run in this process with ``dry_run=true``."""
    if dry:
        from autorule.core.config import compose
        from autorule.pipeline import run_stage

        for overrides in commands:
            run_stage(compose([*overrides, "dry_run=true"]))
        return
    with log.open("a") as out:
        for overrides in commands:
            out.write(f"\n$ python -m autorule {' '.join(overrides)}\n")
            out.flush()
            done = subprocess.run(
                [sys.executable, "-m", "autorule", *overrides], stdout=out, stderr=out
            )
            if done.returncode:
                raise RuntimeError(f"`python -m autorule {' '.join(overrides)}` failed: see {log}")


def reload_reward_model(root: Path) -> str:
    """Loads the ZeRO-3 rm artifact with ``from_pretrained`` and scores one text."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from autorule.core.artifacts import artifact_path
    from autorule.core.config import compose

    cfg = compose(["stage=rm", f"paths.root={root}", "rm.deepspeed=zero3", "rm.precision=bf16"])
    folder = artifact_path(cfg, "rm") / "model"
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    empty = [name for name, p in model.named_parameters() if p.numel() == 0]
    if empty:
        raise RuntimeError(f"{folder}: ZeRO-3 saved empty weights for {empty[:3]}")
    with torch.no_grad():
        score = model(**tokenizer(["<|user|>Hi<|assistant|>Hello!"], return_tensors="pt")).logits
    if not torch.isfinite(score).all():
        raise RuntimeError(f"{folder}: the reloaded reward model scores {score.tolist()}")
    return f"reloaded, score {score.item():.3f}"


def grpo_step_time(root: Path) -> str:
    """Seconds per optimizer step of the ZeRO-3 GRPO run (TRL's logged ``step_time``; the
    first step, which pays for start-up, left out when there are more)."""
    from autorule.core.artifacts import artifact_path
    from autorule.core.config import compose
    from autorule.stages.grpo import LOG_HISTORY

    overrides = stage_commands(root)["grpo_zero3"][0]
    history = artifact_path(compose(overrides), "grpo") / LOG_HISTORY
    times = [
        entry["step_time"]
        for entry in map(json.loads, history.read_text().splitlines())
        if "step_time" in entry
    ]
    if not times:
        return f"step time: none logged in {history}"
    later = times[1:] or times
    return f"{sum(later) / len(later):.2f} s/step (steps 2-{len(times)} of {len(times)})"


def judge_throughput(device: str, dry: bool) -> str:
    """Pairs/s of the tiny judge on ``device``, logprob and generate modes."""
    from autorule.core.config import compose
    from autorule.rewards.judge import RuleJudge

    responses = [f"Step {i}: rinse the rice, then cook it for {10 + i} minutes." for i in range(8)]
    responses = responses[:1] if dry else responses * 8
    rules = [f"The response gives concrete step number {i}." for i in range(2 if dry else 25)]
    figures = []
    for mode in ("logprob", "generate"):
        overrides = [f"judge.mode={mode}", f"judge.llm.device={device}", "judge.llm.cache=false"]
        cfg = compose([*overrides, "judge.llm.max_tokens=4"] if dry else overrides)
        judge = RuleJudge(cfg)
        try:
            judge.judge(responses[:1], rules[:1])  # loads and warms the model
            start = time.perf_counter()
            judge.judge(responses, rules)
            seconds = time.perf_counter() - start
        finally:
            judge.close()
        figures.append(f"{mode} {len(responses) * len(rules) / seconds:,.0f} pairs/s")
    return ", ".join(figures)


def sft_mfu(device: str, dry: bool) -> tuple[str, dict]:
    """Tokens/s and MFU of SFT on a random Llama, padded and packed."""
    import torch

    from autorule.training.throughput import measure, peak_flops, random_llama, uf_like_lengths

    shape = LLAMA_DRY if dry else LLAMA_05B
    dtype = torch.float32 if dry else torch.bfloat16
    model = random_llama(**shape, dtype=dtype).to(device)
    if not dry:
        model.config._attn_implementation = "sdpa"
    params = sum(p.numel() for p in model.parameters())
    peak = None if dry else peak_flops(torch.cuda.get_device_name())
    lengths = uf_like_lengths(16 if dry else 160, seed=0, scale=0.1 if dry else 1.0)
    results = {}
    for packed in (False, True):
        result = measure(model, lengths, 4 if dry else 8, packed, device=device, peak=peak)
        results[result.layout] = result.as_dict()
    line = f"{params / 1e6:.1f}M params: " + ", ".join(
        f"{layout} {r['tokens_per_s']:,.0f} tok/s"
        + (f" MFU {r['mfu']:.1%}" if r["mfu"] is not None else "")
        + f" (padding {r['padding_share']:.0%})"
        for layout, r in results.items()
    )
    return line, {"parameters": params, **results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="where the JSON report goes")
    parser.add_argument("--root", default="outputs/gpu_check", help="artifact root of the runs")
    parser.add_argument("--dry-run", action="store_true", help="CPU, small, nothing trained")
    args = parser.parse_args(argv)
    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    log = root / "gpu_check.log"
    commands = stage_commands(root)
    has_vllm = importlib.util.find_spec("vllm") is not None

    def stage_part(name: str, then=None):
        def part():
            run_commands(commands[name], dry, log)
            if dry:
                missing = " (vLLM is not installed)" if name == "vllm" and not has_vllm else ""
                return f"dry run: commands composed{missing}"
            return then() if then else "ok"

        return part

    parts = {
        "pipeline_bf16": stage_part("pipeline_bf16"),
        "sft_zero2": stage_part("sft_zero2"),
        "rm_zero3": stage_part("rm_zero3", lambda: reload_reward_model(root)),
        "grpo_zero3": stage_part("grpo_zero3", lambda: grpo_step_time(root)),
        "vllm": stage_part("vllm") if has_vllm or dry else None,
        "judge": lambda: judge_throughput(device, dry),
        "mfu": lambda: sft_mfu(device, dry),
    }
    report = {"device": "cpu (dry run)" if dry else _device_name(), "dry_run": dry, "parts": {}}
    for name, part in parts.items():
        start = time.perf_counter()
        entry: dict = {}
        if part is None:
            entry = {"status": "skipped", "note": "vLLM is not installed (pip install vllm)"}
        else:
            try:
                result = part()
                note, details = result if isinstance(result, tuple) else (result, None)
                entry = {"status": "ok", "note": note}
                if details:
                    entry["details"] = details
            except Exception as err:  # noqa: BLE001 - one failed part must not hide the others
                entry = {"status": "failed", "note": f"{type(err).__name__}: {err}"}
                traceback.print_exc()
        entry["seconds"] = round(time.perf_counter() - start, 1)
        report["parts"][name] = entry
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ngpu_check on {report['device']} (log: {log}, report: {args.out})")
    print(f"{'part':<14} {'status':<8} {'seconds':>8}  note")
    for name, entry in report["parts"].items():
        print(f"{name:<14} {entry['status']:<8} {entry['seconds']:>8.1f}  {entry['note']}")
    return 1 if any(e["status"] == "failed" for e in report["parts"].values()) else 0


def _device_name() -> str:
    import torch

    return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
