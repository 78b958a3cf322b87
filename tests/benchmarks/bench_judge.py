"""Rule verification: one greedy generation per (response, rule) against logprob verdicts.

    make bench        # or: python -m pytest -q -m bench -s tests/benchmarks/bench_judge.py

25 rules x N responses (bundled UltraFeedback prompts and chosen answers) go through the same
tiny judge (the tiny policy model, ``llm@judge.llm=hf``) in both modes:

* ``generate`` (the paper's method): one greedy generation of ``MAX_NEW_TOKENS`` per pair, in
  ``generate()`` batches of ``GENERATE_BATCH``. The tiny model never writes an end token before
  that, so every verdict costs the full budget, as a real judge's short reason plus verdict does.
* ``logprob``: no generation; per batch of ``VERDICT_BATCH`` requests, one forward pass over the
  shared prefixes (instructions and conversation) and one over every rule's suffix on top of
  their copied KV caches (:func:`autorule.llm.hf.last_token_logprobs`).

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
import re
import statistics
import time

import numpy as np
import pandas as pd
import pytest

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
RESPONSES = int(os.environ.get("AUTORULE_BENCH_RESPONSES", 16))  # N: about a minute on 2 cores
ROUNDS = 4  # alternating rounds of both modes, each on its own slice of N / ROUNDS responses
MAX_NEW_TOKENS = 24  # a short reason plus "[[Yes]]", as a real verdict
GENERATE_BATCH = 32  # the faster of 8 and 32 on this machine (generate() pays per decode step)
VERDICT_BATCH = 64  # logprob requests per pair of forward passes (judge.llm.verdict_batch_size)
TARGET = 10.0  # speed-up of logprob over generate mode at 25 rules
DOC = REPO_ROOT / "docs" / "benchmarks.md"
WRITE_DOCS = "AUTORULE_BENCH_WRITE_DOCS"  # =1: record the figures in DOC when the asserts pass
COMMAND = (
    f"{WRITE_DOCS}=1 .venv/bin/python -m pytest -q -m bench -s tests/benchmarks/bench_judge.py"
)


def _write_doc(section: str) -> None:
    start, end = "<!-- rule-verification:start -->", "<!-- rule-verification:end -->"
    block = f"{start}\n{section}\n{end}"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if start in text:
        text = re.sub(
            re.escape(start) + ".*?" + re.escape(end), lambda m: block, text, flags=re.DOTALL
        )
    else:
        text = text.rstrip("\n") + f"\n\n## Rule verification\n\n{block}\n"
    DOC.write_text(text)


def _timed(judge: RuleJudge, responses, prompts):
    wall, cpu = time.perf_counter(), time.process_time()
    result = judge.judge(responses, RULES, prompts=prompts)
    return result, time.perf_counter() - wall, time.process_time() - cpu


@pytest.mark.bench
def test_rule_verification_throughput(tmp_path):
    import torch

    load_before = os.getloadavg()[0]
    data = REPO_ROOT / "data" / "ultrafeedback_binarized" / "data"
    rows = pd.read_parquet(data / "train_prefs-00000-of-00001.parquet").head(RESPONSES)
    prompts = rows["prompt"].tolist()
    responses = [chosen[-1]["content"] for chosen in rows["chosen"]]
    common = [
        f"paths.root={tmp_path}",
        "llm@judge.llm=hf",
        "judge.llm.model=tiny",
        f"judge.llm.max_tokens={MAX_NEW_TOKENS}",
        f"judge.llm.batch_size={GENERATE_BATCH}",
        f"judge.llm.verdict_batch_size={VERDICT_BATCH}",
        "judge.llm.cache=false",
        "judge.llm.progress=false",
    ]
    generate = RuleJudge(compose([*common, "judge.mode=generate"]))
    logprob = RuleJudge(compose([*common, "judge.mode=logprob"]))
    for judge in (generate, logprob):  # load the weights outside the timed part
        judge.judge(responses[:1], RULES[:2], prompts=prompts[:1])
    tokenizer = logprob.llm._tokenizer
    prompt_tokens = [
        len(
            tokenizer.apply_chat_template(r, add_generation_prompt=True, return_dict=True)[
                "input_ids"
            ]
        )
        for r in logprob.requests(responses, RULES, prompts)
    ]

    times = {"generate": [0.0, 0.0], "logprob": [0.0, 0.0]}
    results: dict[str, list] = {"generate": [], "logprob": []}
    speedups = []
    for r, part in enumerate(np.array_split(np.arange(RESPONSES), ROUNDS)):
        sub_r = [responses[i] for i in part]
        sub_p = [prompts[i] for i in part]
        order = [("generate", generate), ("logprob", logprob)]
        round_wall = {}
        for name, judge in order if r % 2 == 0 else order[::-1]:
            result, wall, cpu = _timed(judge, sub_r, sub_p)
            times[name][0] += wall
            times[name][1] += cpu
            round_wall[name] = wall
            results[name].append(result)
        speedups.append(round_wall["generate"] / round_wall["logprob"])

    pairs = RESPONSES * len(RULES)
    gen_decisions = np.concatenate([x.decisions for x in results["generate"]])
    lp_decisions = np.concatenate([x.decisions for x in results["logprob"]])
    lp_probs = np.concatenate([x.probs for x in results["logprob"]])
    unparsed = sum(x.unparsed for x in results["generate"])
    agreement = float((gen_decisions == lp_decisions).mean())
    speedup = times["generate"][0] / times["logprob"][0]
    cpu_speedup = times["generate"][1] / times["logprob"][1]
    rows_md = "\n".join(
        f"| {name} | {wall:.2f} | {pairs / wall:.1f} | {cpu:.2f} |"
        for name, (wall, cpu) in times.items()
    )
    section = (
        f"{len(RULES)} rules x {RESPONSES} responses = {pairs} (response, rule) pairs, bundled "
        "UltraFeedback prompts and chosen answers, the tiny profile's random policy model as judge "
        f"(`llm@judge.llm=hf`, fp32, {torch.get_num_threads()} torch threads). Judge prompts: "
        f"{statistics.mean(prompt_tokens):.0f} tokens on average (tiny tokenizer). generate: one "
        f"greedy generation of {MAX_NEW_TOKENS} new tokens per pair, {GENERATE_BATCH} pairs per "
        f"`generate()` call; logprob: {VERDICT_BATCH} requests per pair of forward passes (shared "
        f"prefixes once, then every rule's suffix on their KV caches). The modes alternate over "
        f"{ROUNDS} rounds on the same responses; times are totals.\n\n"
        "| mode | wall time (s) | pairs/s | CPU time (s) |\n|---|---|---|---|\n"
        f"{rows_md}\n\n"
        f"Speed-up of logprob over generate: **{speedup:.1f}x** in wall time (per round: "
        f"{', '.join(f'{s:.1f}x' for s in speedups)}), {cpu_speedup:.1f}x in CPU time. "
        f"Target: {TARGET:.0f}x at {len(RULES)} rules. Agreement of the thresholded decisions: "
        f"{agreement:.1%}; this measures nothing about judging here: the random model never "
        f"writes a verdict marker ({unparsed} of {pairs} generated verdicts unparsed, i.e. not "
        f"satisfied), and its p(Yes) lies between {lp_probs.min():.3f} and {lp_probs.max():.3f} "
        f"(threshold {logprob.threshold}). Machine: {os.cpu_count()} CPU cores shared with other "
        f"work, no GPU, Python {platform.python_version()}, 1-minute load average "
        f"{load_before:.2f} at the start and {os.getloadavg()[0]:.2f} at the end. Command:\n\n"
        f"```\n{COMMAND}\n```"
    )
    print("\n" + section)
    assert all(x.probs.shape == (len(x.probs), len(RULES)) for x in results["logprob"])
    assert sum(x.failed for x in results["generate"] + results["logprob"]) == 0
    assert speedup >= TARGET, f"logprob mode is only {speedup:.1f}x faster than generate mode"
    if os.environ.get(WRITE_DOCS) == "1":
        _write_doc(section)
