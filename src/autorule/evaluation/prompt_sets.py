"""Prompt sets the generate stage samples from (``generate.prompts``).

* a preprocess split, e.g. ``test_subset`` (the first ``preprocess.test_subset_size`` filtered test
  prompts: the paper's UltraFeedback evaluation set) or ``test_prefs``: its ``prompt`` column;
* ``alpaca_eval``: AlpacaEval's 805 instructions (``alpaca_eval.json`` of the hub dataset
  ``tatsu-lab/alpaca_eval``, fetched with ``huggingface_hub``);
* a file (``.json`` list, ``.jsonl``, ``.parquet``) of rows with ``turns`` (a list of user turns:
  FastChat's MT-Bench ``question.jsonl``), ``instruction`` (AlpacaEval's format) or ``prompt``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autorule.evaluation.generation import Conversation

ALPACA_EVAL = "alpaca_eval"
ALPACA_EVAL_HUB = {"repo_id": "tatsu-lab/alpaca_eval", "filename": "alpaca_eval.json"}
FILE_SUFFIXES = (".json", ".jsonl", ".parquet")
# Row fields carried to the outputs when present (AlpacaEval's dataset, MT-Bench's category).
META_FIELDS = ("dataset", "category", "reference")


def kind(value: str) -> str:
    """``split``, ``alpaca_eval`` or ``file`` for a ``generate.prompts`` value."""
    if value == ALPACA_EVAL:
        return ALPACA_EVAL
    if "/" in value or value.endswith(FILE_SUFFIXES):
        return "file"
    return "split"


def from_split(folder: Path, split: str) -> list[Conversation]:
    """The prompts of the preprocess split ``split`` in the artifact ``folder``."""
    import pandas as pd

    path = folder / f"{split}.parquet"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.parquet"))
        raise FileNotFoundError(
            f"generate.prompts={split}: the preprocess artifact {folder} has no {path.name} "
            f"(splits: {', '.join(known)}); name a split, alpaca_eval or a prompt file"
        )
    df = pd.read_parquet(path)
    if "prompt" not in df.columns:
        raise ValueError(f"{path} has no 'prompt' column to sample from")
    ids = df["prompt_id"] if "prompt_id" in df.columns else range(len(df))
    return [
        Conversation(id=str(i), turns=[str(p)], meta={"dataset": split})
        for i, p in zip(ids, df["prompt"], strict=True)
    ]


def read_rows(path: Path, key: str = "generate.prompts") -> list[dict[str, Any]]:
    """The rows of a ``.json`` (a list of objects), ``.jsonl`` or ``.parquet`` prompt file
    (``key``: the setting that names it, for the errors)."""
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} ({key}) does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    text = path.read_text()
    try:
        if suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"prompt file {path} ({key}) is not valid JSON: {err}") from err
    if not isinstance(rows, list):
        raise ValueError(f"prompt file {path} ({key}) must hold a list of objects")
    return rows


def from_rows(rows: list[dict[str, Any]], where: str) -> list[Conversation]:
    """Conversations from prompt rows (``turns``, ``instruction`` or ``prompt`` each)."""
    items = []
    for n, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: row {n} is not an object")
        if "turns" in row:
            turns = [str(t) for t in list(row["turns"])]
        elif "instruction" in row:
            turns = [str(row["instruction"])]
        elif "prompt" in row:
            turns = [str(row["prompt"])]
        else:
            raise ValueError(f"{where}: row {n} has none of the fields turns, instruction, prompt")
        if not turns:
            raise ValueError(f"{where}: row {n} has no turns")
        row_id = next((row[k] for k in ("question_id", "id", "prompt_id") if k in row), n)
        meta = {k: row[k] for k in META_FIELDS if k in row and isinstance(row[k], str | int)}
        if "question_id" in row:
            meta["question_id"] = row["question_id"]
        items.append(Conversation(id=str(row_id), turns=turns, meta=meta))
    return items


def from_file(path: str | Path) -> list[Conversation]:
    path = Path(path).expanduser()
    return from_rows(read_rows(path), str(path))


def reference_answers(path: str | Path, key: str) -> dict[str, str]:
    """Reference answers by instruction from a file of rows with an instruction (``turns``,
    ``instruction`` or ``prompt``) and an answer (``output``, ``response`` or ``responses[0]``),
    as AlpacaEval's reference outputs; ``key`` names the setting, for the errors."""
    path = Path(path).expanduser()
    rows = read_rows(path, key)
    where = f"{path} ({key})"
    found = {}
    for n, (row, item) in enumerate(zip(rows, from_rows(rows, where), strict=True)):
        answer = next((row[k] for k in ("output", "response") if k in row), None)
        if answer is None and isinstance(row.get("responses"), list) and row["responses"]:
            answer = row["responses"][0]
        if not isinstance(answer, str):
            raise ValueError(f"{where}: row {n} has no output, response or responses field")
        found[item.turns[0]] = answer
    return found


def alpaca_eval_file(revision: str | None = None) -> Path:
    """AlpacaEval's instruction file from the hub (cached by huggingface_hub)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(**ALPACA_EVAL_HUB, repo_type="dataset", revision=revision))
    except Exception as err:  # offline, no such revision: say what was being fetched
        raise RuntimeError(
            f"generate.prompts=alpaca_eval fetches {ALPACA_EVAL_HUB['filename']} from the hub "
            f"dataset {ALPACA_EVAL_HUB['repo_id']} and could not ({err}); download it once and "
            "point generate.prompts at the file instead"
        ) from err
