"""Rule verification: one greedy generation per (response, rule) against logprob verdicts.

    make bench        # or: python -m pytest -q -m bench -s tests/benchmarks/bench_judge.py

25 rules x N responses (bundled UltraFeedback prompts and chosen answers) go through the same
tiny judge (the tiny policy model, ``llm@judge.llm=hf``) in both modes:

* ``generate`` (the paper's method): one greedy generation of ``MAX_NEW_TOKENS`` per pair, in
  ``generate()`` batches of ``GENERATE_BATCH``. The tiny model never writes an end token before
  that, so every verdict costs the full budget, as a real judge's short reason plus verdict does.
* ``logprob``: no generation; per batch of ``VERDICT_BATCH`` requests, one forward pass over the
  shared prefixes (instructions, conversation and question) and one over the rules' suffixes,
  packed beside each other on their prefix's KV cache (:func:`autorule.llm.hf.last_token_logprobs`).

The machine's cores are shared, so wall times wander from one minute to the next. The two modes
therefore run in alternating rounds on the same slices of responses (``ROUNDS`` rounds, the
order switched each round), and the figures are the totals over all rounds; the per-round
speed-ups give the spread. CPU time of this process is reported beside wall time: it counts the
work done rather than the waiting for a core.

Agreement of the thresholded decisions is reported too, but on a model with random weights it
says nothing about a real judge: the tiny model never writes a ``[[Yes]]``/``[[No]]`` marker, so
every generated verdict is unparsed (not satisfied), and agreement is the share of pairs whose
p(Yes) is below ``judge.threshold``.

The figures are printed; with ``AUTORULE_BENCH_WRITE_DOCS=1`` they are also written into
docs/benchmarks.md ("Rule verification"), only after every assert passed.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np
import pandas as pd
import pytest
from benchdoc import write_section

from autorule.core.config import REPO_ROOT, compose
from autorule.rewards import RuleJudge

RULES = [
    "The response answers the question that was asked.",
    "The response is factually accurate.",
    "The response follows every explicit instruction in the request.",
    "The response stays on topic.",
    "The response is free of spelling and grammar mistakes.",
    "The response uses a polite and respectful tone.",
    "The response avoids needless repetition.",
    "The response is organised into clear paragraphs or lists.",
    "The response gives concrete examples where they help.",
    "The response explains the reasoning behind its conclusions.",
    "The response states its assumptions.",
    "The response admits uncertainty instead of guessing.",
    "The response refuses clearly harmful requests.",
    "The response does not invent sources or quotations.",
    "The response matches its length to the request.",
    "The response defines technical terms a newcomer would not know.",
    "The response puts the most important information first.",
    "The response uses consistent formatting throughout.",
    "The response gives code that runs as written.",
    "The response uses the units and notation of the request.",
    "The response ends with a clear conclusion or answer.",
    "The response avoids moralising or lecturing the user.",
    "The response asks for clarification when the request is ambiguous.",
    "The response considers the safety of the user.",
    "The response writes in the language of the request.",
]
RESPONSES = int(os.environ.get("AUTORULE_BENCH_RESPONSES", 48))  # N: about a minute in all
ROUNDS = 4  # alternating rounds of every mode, each on its own slice of N / ROUNDS responses
NEW_TOKENS = (16, 32)  # generate mode's budgets: a verdict with a one-sentence reason fits in them
GENERATE_BATCH = 16  # the fastest of 8, 16, 32 and 64 here (within ~15% of each other)
VERDICT_BATCH = 128  # logprob requests per pair of forward passes (judge.llm.verdict_batch_size)
THREADS = 1  # torch threads: with 2 and the cores shared, wall times swung 5x between runs
TARGET = 10.0  # speed-up of logprob over generate mode at 25 rules
DOC = REPO_ROOT / "docs" / "benchmarks.md"
WRITE_DOCS = "AUTORULE_BENCH_WRITE_DOCS"  # =1: record the figures in DOC when the asserts pass
COMMAND = (
    f"{WRITE_DOCS}=1 .venv/bin/python -m pytest -q -m bench -s tests/benchmarks/bench_judge.py"
)


def _write_doc(section: str) -> None:
    write_section("rule-verification", "Rule verification", section)


def _timed(judge: RuleJudge, responses, prompts):
    wall, cpu = time.perf_counter(), time.process_time()
    result = judge.judge(responses, RULES, prompts=prompts)
    return result, time.perf_counter() - wall, time.process_time() - cpu


@pytest.mark.bench
def test_rule_verification_throughput(tmp_path):
    import torch

    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()[0]
    data = REPO_ROOT / "data" / "ultrafeedback_binarized" / "data"
    rows = pd.read_parquet(data / "train_prefs-00000-of-00001.parquet").head(RESPONSES)
    prompts = rows["prompt"].tolist()
    responses = [chosen[-1]["content"] for chosen in rows["chosen"]]
    common = [
        f"paths.root={tmp_path}",
        "llm@judge.llm=hf",
        "judge.llm.model=tiny",
        f"judge.llm.batch_size={GENERATE_BATCH}",
        f"judge.llm.verdict_batch_size={VERDICT_BATCH}",
        "judge.llm.cache=false",
        "judge.llm.progress=false",
        # The tiny model's context is 2,048 positions: room for the longest budget's verdict.
        f"judge.max_input_tokens={2048 - max(NEW_TOKENS)}",
    ]
    judges = {
        f"generate, {n} new tokens": RuleJudge(
            compose([*common, "judge.mode=generate", f"judge.llm.max_tokens={n}"])
        )
        for n in NEW_TOKENS
    }
    judges["logprob"] = logprob = RuleJudge(compose([*common, "judge.mode=logprob"]))
    for judge in judges.values():  # load the weights and warm up outside the timed part
        judge.judge(responses[:2], RULES, prompts=prompts[:2])
    tokenizer = logprob.llm._tokenizer
    prompt_tokens = [
        len(tokenizer(logprob.llm._prompt(tokenizer, r), add_special_tokens=False)["input_ids"])
        for r in logprob.requests(responses, RULES, prompts)
    ]

    times = {name: [0.0, 0.0] for name in judges}
    results: dict[str, list] = {name: [] for name in judges}
    names = list(judges)
    for r, part in enumerate(np.array_split(np.arange(RESPONSES), ROUNDS)):
        sub_r, sub_p = [responses[i] for i in part], [prompts[i] for i in part]
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            result, wall, cpu = _timed(judges[name], sub_r, sub_p)
            times[name][0] += wall
            times[name][1] += cpu
            results[name].append(result)

    pairs = RESPONSES * len(RULES)
    decisions = {n: np.concatenate([x.decisions for x in results[n]]) for n in judges}
    lp_probs = np.concatenate([x.probs for x in results["logprob"]])
    generated = [n for n in judges if n != "logprob"]
    unparsed = {n: sum(x.unparsed for x in results[n]) for n in generated}
    speedups = {n: times[n][0] / times["logprob"][0] for n in generated}
    cpu_speedups = {n: times[n][1] / times["logprob"][1] for n in generated}
    agreement = {n: float((decisions[n] == decisions["logprob"]).mean()) for n in generated}
    table = "\n".join(
        f"| {name} | {wall:.2f} | {pairs / wall:.1f} | {cpu:.2f} | "
        + (f"{speedups[name]:.1f}x / {cpu_speedups[name]:.1f}x |" if name in speedups else "- |")
        for name, (wall, cpu) in times.items()
    )
    best = min(speedups.values())
    verdict = (
        f"reached ({best:.1f}x at the shortest budget)"
        if best >= TARGET
        else f"not reached at {min(NEW_TOKENS)} new tokens ({best:.1f}x)"
    )
    section = (
        f"{len(RULES)} rules x {RESPONSES} responses = {pairs} (response, rule) pairs: bundled "
        "UltraFeedback prompts and chosen answers, judged by the tiny profile's random policy "
        f"model (`llm@judge.llm=hf`, fp32, {THREADS} torch thread). Judge prompts: "
        f"{statistics.mean(prompt_tokens):.0f} tokens on average with the tiny tokenizer, of "
        f"which the rule line is the only part that differs between a response's rules. "
        f"generate: one greedy generation per pair, {GENERATE_BATCH} pairs per `generate()` "
        f"call (the tiny model never stops early, so every verdict uses its whole budget); "
        f"logprob: {VERDICT_BATCH} requests per pair of forward passes (the shared prefixes "
        f"once, then the rules' suffixes packed beside each other on their prefix's KV cache). "
        f"Conversations are cut to fit the tiny model's context ({2048 - max(NEW_TOKENS)} "
        f"tokens) for both modes. The modes take turns over "
        f"{ROUNDS} rounds on the same responses; times are totals.\n\n"
        "| mode | wall time (s) | pairs/s | CPU time (s) | logprob speed-up, wall / CPU |\n"
        f"|---|---|---|---|---|\n{table}\n\n"
        f"Target: {TARGET:.0f}x at {len(RULES)} rules: {verdict}. "
        + ", ".join(f"Agreement with {n}: {agreement[n]:.1%}" for n in generated)
        + f". These agreements measure nothing about judging: the random model never writes a "
        f"verdict marker ({', '.join(str(u) for u in unparsed.values())} of {pairs} generated "
        f"verdicts unparsed, i.e. not satisfied), and its p(Yes) lies between "
        f"{lp_probs.min():.3f} and {lp_probs.max():.3f} (threshold {logprob.threshold}). "
        f"Machine: {os.cpu_count()} CPU cores shared with other work, no GPU, Python "
        f"{platform.python_version()}, torch {torch.__version__}; 1-minute load average "
        f"{load_before:.2f} at the start and {os.getloadavg()[0]:.2f} at the end. Command:\n\n"
        f"```\n{COMMAND}\n```"
    )
    print("\n" + section)
    assert all(x.probs.shape[1] == len(RULES) for x in results["logprob"])
    assert sum(x.failed for n in judges for x in results[n]) == 0
    assert best > 1.0, "logprob mode must at least beat generate mode"
    if os.environ.get(WRITE_DOCS) == "1":
        _write_doc(section)
