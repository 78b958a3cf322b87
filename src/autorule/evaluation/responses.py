"""Response sets: the generate artifact's layout and what the stages after it read from it.

The generate stage writes ``responses.jsonl`` (the model's answers), ``reference.jsonl`` (the
reference's, when sampled), ``checkpoints/step-<N>.jsonl`` (each kept checkpoint's),
``candidates.jsonl`` (every best-of-N sample and its score) and ``sampling.json``; evaluate,
feedback and feedback_eval read them through the functions here, so no stage imports another.
Each row of a response file: ``id``, ``turns``, ``responses`` (one per turn), ``output_tokens``,
``finished``, and the prompt set's own fields.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig

from autorule.core.files import read_jsonl
from autorule.evaluation.generation import best_index, later_turn_prompt

# Stages whose artifact holds a policy in model/ (a value of generate.model names one of them).
MODEL_STAGES = ("sft", "grpo")
CHECKPOINTS_DIR = "checkpoints"  # a training stage's kept checkpoints; generate's step files
RESPONSES = "responses.jsonl"
REFERENCE = "reference.jsonl"
CANDIDATES = "candidates.jsonl"
SAMPLING = "sampling.json"


def step_of(path: Path | str) -> int:
    """The training step in a ``step-<N>`` name (-1 when it has none)."""
    match = re.search(r"step-(\d+)", str(path))
    return int(match.group(1)) if match else -1


def response_sets(generated: Path, max_pairs: int | None) -> dict[str, list[dict]]:
    """label -> rows: ``model``, ``reference`` (when sampled) and ``step-<N>`` checkpoints, each
    cut to the first ``max_pairs`` prompts."""
    sets = {"model": read_jsonl(generated / RESPONSES)}
    if (generated / REFERENCE).is_file():
        sets["reference"] = read_jsonl(generated / REFERENCE)
    for path in sorted((generated / CHECKPOINTS_DIR).glob("step-*.jsonl"), key=step_of):
        sets[path.stem] = read_jsonl(path)
    if max_pairs is not None:
        sets = {label: rows[: int(max_pairs)] for label, rows in sets.items()}
    ids = [row["id"] for row in sets["model"]]
    for label, rows in sets.items():
        if [row["id"] for row in rows] != ids:
            raise ValueError(f"{generated}: the {label} responses are not for the same prompts")
    return sets


def candidates(generated: Path) -> list[dict]:
    """``id``, ``prompt`` (the first turn) and ``answers`` (every best-of-N candidate) of each
    prompt of a generate artifact."""
    path = generated / CANDIDATES
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: that generate artifact kept no best-of-N candidates "
            "(generate.best_of_n > 1 keeps them); delete the folder and re-run: the pipeline "
            "samples it again"
        )
    prompts = {row["id"]: str(row["turns"][0]) for row in read_jsonl(generated / RESPONSES)}
    return [
        {"id": str(row["id"]), "prompt": prompts[row["id"]], "answers": list(row["candidates"])}
        for row in read_jsonl(path)
    ]


def candidate_groups(generated: Path) -> list[tuple[str, list[str]]]:
    """(first-turn prompt, every best-of-N candidate) per prompt of a generate artifact."""
    return [(c["prompt"], [str(a) for a in c["answers"]]) for c in candidates(generated)]


def pick_for_n(scores: Sequence[float], n: int) -> int:
    """The index of the best-scoring of the first ``n`` candidates (the first on ties): the
    candidates are independent samples, so the first n are a best-of-n draw of their own."""
    if not 1 <= n <= len(scores):
        raise ValueError(f"best-of-{n} of {len(scores)} candidates")
    return best_index(list(scores)[:n])


def prompt_formatter(cfg: DictConfig, tokenizer_path: str) -> Callable:
    """``format(turns, answers)``: the prompt of the next turn, as the policy was trained
    (``preprocess.prompt_format``: the plain template, or the tokenizer's chat template)."""
    if str(cfg.preprocess.prompt_format) == "plain":
        template = str(cfg.preprocess.plain_template)
        return lambda turns, answers: later_turn_prompt(template, turns, answers)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)

    def chat(turns: Sequence[str], answers: Sequence[str]) -> str:
        messages = []
        for q, a in zip(turns, answers, strict=False):
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": turns[len(answers)]})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return chat
