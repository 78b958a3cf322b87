"""Stage ``critiques``: a strong judge critiques both answers of each training preference pair.

    python -m autorule stage=critiques                       # tiny profile: local hf model
    python -m autorule stage=critiques llm@critique.llm=openai \
        critique.llm.base_url=http://judge-node:8000/v1 critique.llm.model=<served name>

The oracle critiques a CLoud reward model first learns to write (Ankner et al. 2024, arXiv
2408.11791: Llama-3.1-405B-Instruct critiqued every training answer, greedily, up to 2,048 tokens).
For each of the first ``critique.num_pairs`` pairs of preprocess's ``critique.split`` (with
``critique.pairs=oracle``: of the oracle stage's labelled pairs of sampled answers, CLoud's own
data), the judge (LLM role ``critique.llm``, any backend) gets the system prompt
``critique.system_prompt`` and the request ``critique.template`` once with the chosen and once with
the rejected answer. The judge is not told which answer was preferred, so a critique says what it
sees, not what it was told.

Calls go through the LLM layer (:mod:`autorule.llm`): concurrent for served judges, batched for
local ones, and cached as they arrive, so an interrupted run re-run with the same command pays
only for the calls it had not made. Calls that fail for good stop the stage before it commits
(beyond ``critique.max_failed_calls``); a pair with a failed call is left out when failures are
allowed, and the artifact is then provisional: the next run recomputes it, asking again only for
the failed calls.

Artifact: ``critiques.parquet`` (``prompt``, ``chosen``, ``rejected``, ``chosen_feedback``,
``rejected_feedback``), ``calls.jsonl`` (one record per call: side, row, latency, tokens,
retries, cached, error). Counts: pairs, calls, cached_calls, failed_calls, dropped_pairs, retries,
input_tokens, output_tokens, empty_critiques.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from autorule import llm as llms
from autorule.core.artifacts import StageJob
from autorule.core.config import check_choice, check_number, check_paths
from autorule.core.files import write_jsonl, write_parquet_redacted
from autorule.core.stage import StageSpec
from autorule.data.pairs import CRITIQUE_COLUMNS, CRITIQUES, preference_rows
from autorule.rules.prompts import fill

log = logging.getLogger(__name__)

SIDES = ("chosen", "rejected")

# The critique section decides the critiques, its LLM role included (backend, model, sampling,
# token budget), except the role's transport keys and the failure allowance.
PAIR_SOURCES = ("preprocess", "oracle")


def from_oracle(cfg) -> bool:
    return cfg.critique.pairs == "oracle"


SPEC = StageSpec(
    name="critiques",
    inputs=("preprocess", "oracle"),
    keys=("critique",),
    llm_roles=("critique.llm",),
    # The oracle's pairs are always its train_prefs table: critique.split names a preprocess split.
    ignore=("critique.max_failed_calls",),
    ignore_when=lambda cfg: ("critique.split",) if from_oracle(cfg) else (),
    only_if={"preprocess": lambda cfg: not from_oracle(cfg), "oracle": from_oracle},
)


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before any call is paid for."""
    from autorule.llm import check_role

    check_paths(cfg)
    section = cfg.critique
    check_choice(section.pairs, "critique.pairs", PAIR_SOURCES)
    if not from_oracle(cfg):
        check_choice(cfg.dataset.name, "dataset.name", ("uf",))  # UltraFeedback preference pairs
    check_number(section.num_pairs, "critique.num_pairs", low=1, none_ok=True)
    check_number(section.max_failed_calls, "critique.max_failed_calls", low=0)
    check_role(cfg, "critique.llm")


def run(cfg: DictConfig) -> Path:
    check(cfg)
    with StageJob(cfg, SPEC.name) as job:
        if job.done:
            return job.path
        section = cfg.critique

        # ---- load: the pairs
        if from_oracle(cfg):  # the oracle's labelled pairs of sampled answers (CLoud's data)
            split = job.input("oracle") / "train_prefs.parquet"
        else:
            split = job.input("preprocess") / f"{section.split}.parquet"
        if not split.is_file():
            raise FileNotFoundError(f"critique.split={section.split}: no {split}")
        pairs = preference_rows(split, section.num_pairs)
        log.info("[critiques] %d pairs from %s", len(pairs), split)

        # ---- critique both answers of every pair
        judge = llms.build(cfg, "critique.llm")
        requests = [
            critique_request(section, prompt, answer)
            for side in SIDES
            for prompt, answer in zip(pairs["prompt"], pairs[side], strict=True)
        ]
        answers = judge.complete_all(requests, desc="critiques")
        n = len(pairs)
        calls = [
            {"side": SIDES[i // n], "row": i % n, **completion.record()}
            for i, completion in enumerate(answers)
        ]
        write_jsonl(job.workdir / "calls.jsonl", calls)
        failed = [c for c in calls if c["error"]]
        if len(failed) > int(section.max_failed_calls):
            raise RuntimeError(
                f"{len(failed)} of {len(calls)} critique calls failed "
                f"(critique.max_failed_calls={section.max_failed_calls}); first error: "
                f"{failed[0]['error']}\nFinished calls are cached: re-run the same command to "
                f"retry only the failed ones. Details: {job.workdir}/calls.jsonl"
            )

        # ---- write the artifact: pairs whose two critiques both came back
        out = pairs.copy()
        out["chosen_feedback"] = [c.text.strip() for c in answers[:n]]
        out["rejected_feedback"] = [c.text.strip() for c in answers[n:]]
        ok = [answers[i].ok and answers[n + i].ok for i in range(n)]
        out = out[ok].reset_index(drop=True)[list(CRITIQUE_COLUMNS)]
        if out.empty:
            raise RuntimeError(f"no pair has both critiques; see {job.workdir}/calls.jsonl")
        write_parquet_redacted(job.workdir / CRITIQUES, out)
        counts = {
            "pairs": len(out),
            "calls": len(calls),
            "cached_calls": sum(1 for c in calls if c["cached"]),
            "failed_calls": len(failed),
            "dropped_pairs": n - len(out),
            "retries": sum(c["retries"] for c in calls),
            "input_tokens": sum(c["input_tokens"] for c in calls),
            "output_tokens": sum(c["output_tokens"] for c in calls),
            "empty_critiques": int(
                (out["chosen_feedback"] == "").sum() + (out["rejected_feedback"] == "").sum()
            ),
        }
        log.info("[critiques] %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
        return job.commit(counts)


def critique_request(section: DictConfig, prompt: str, answer: str) -> list[dict[str, str]]:
    """The judge's messages for one answer: the system prompt, then the filled template."""
    content = fill(str(section.template), "critique.template", prompt=prompt, response=answer)
    messages = [{"role": "user", "content": content}]
    if section.system_prompt:
        messages.insert(0, {"role": "system", "content": str(section.system_prompt)})
    return messages
