"""AlpacaEval 2.0 hand-off: outputs and a model config in the formats ``alpaca_eval`` reads.

* ``model_outputs.json``: a JSON list of ``{"instruction", "output", "generator", "dataset"}``, the
  format ``alpaca_eval --model_outputs`` loads (``alpaca_eval.utils.load_or_convert_to_dataframe``);
* ``models_configs/<name>/configs.yaml`` and ``prompt.txt``: a model config for
  ``alpaca_eval evaluate_from_model --model_configs <name>`` (with ``base_dir`` pointing at
  ``models_configs``), decoding with transformers as the generate stage sampled.

The leaderboard numbers need AlpacaEval's own 805 instructions (``generate.prompts=alpaca_eval``),
an annotator (an API model; ``weighted_alpaca_eval_gpt4_turbo`` by default) and its key. With
``alpaca_eval`` installed (``pip install 'autorule[alpaca]'``) :func:`run` calls its Python entry
point and returns the leaderboard row, whose ``length_controlled_winrate`` is AlpacaEval 2.0's
length-controlled win rate.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autorule.core.files import write_json_redacted, write_text_redacted

OUTPUTS = "model_outputs.json"
CONFIGS_DIR = "models_configs"
# transformers' names of generate.dtype values, as AlpacaEval's config passes torch_dtype
TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@contextmanager
def root_log_level_kept() -> Iterator[None]:
    """Importing alpaca_eval sets the root logger to INFO; this puts the caller's level back."""
    root = logging.getLogger()
    level = root.level
    try:
        yield
    finally:
        root.setLevel(level)


def installed() -> bool:
    """Whether AlpacaEval can run here (its entry point imports, pkg_resources included)."""
    with root_log_level_kept():
        try:
            import alpaca_eval.main  # noqa: F401
        except ImportError:
            return False
    return True


def model_outputs(rows: Sequence[dict[str, Any]], generator: str) -> list[dict[str, str]]:
    """AlpacaEval output records from generate rows (first turn of each)."""
    return [
        {
            "instruction": row["turns"][0],
            "output": row["responses"][0],
            "generator": generator,
            "dataset": str(row.get("dataset", "autorule")),
        }
        for row in rows
    ]


def prompt_template(plain_template: str) -> str:
    """The policy's template with AlpacaEval's placeholder (``{instruction}``)."""
    if "{prompt}" not in plain_template:
        raise ValueError(f"the prompt template {plain_template!r} has no {{prompt}} placeholder")
    return plain_template.replace("{prompt}", "{instruction}")


def model_config(
    name: str, model_path: str, sampling: dict[str, Any], pretty_name: str | None = None
) -> dict[str, Any]:
    """The ``configs.yaml`` content for a local model decoded with transformers."""
    kwargs: dict[str, Any] = {
        "model_name": model_path,
        "max_new_tokens": int(sampling["max_new_tokens"]),
        "do_sample": float(sampling["temperature"]) > 0,
    }
    if kwargs["do_sample"]:
        kwargs.update(temperature=float(sampling["temperature"]), top_p=float(sampling["top_p"]))
    dtype = TORCH_DTYPES.get(str(sampling.get("dtype")))
    if dtype:
        kwargs["model_kwargs"] = {"torch_dtype": dtype}
    return {
        name: {
            "prompt_template": f"{name}/prompt.txt",
            "fn_completions": "huggingface_local_completions",
            "completions_kwargs": kwargs,
            "pretty_name": pretty_name or name,
        }
    }


def write(
    folder: Path,
    rows: Sequence[dict[str, Any]],
    name: str,
    model_path: str,
    sampling: dict[str, Any],
    plain_template: str,
) -> dict[str, str]:
    """Writes the outputs and the model config under ``folder``; returns their paths."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    outputs = folder / OUTPUTS
    write_json_redacted(outputs, model_outputs(rows, name))
    config_dir = folder / CONFIGS_DIR / name
    config_dir.mkdir(parents=True, exist_ok=True)
    config = model_config(name, model_path, sampling)
    write_text_redacted(config_dir / "configs.yaml", yaml.safe_dump(config, sort_keys=False))
    write_text_redacted(config_dir / "prompt.txt", prompt_template(plain_template))
    return {"outputs": str(outputs), "model_configs": str(config_dir / "configs.yaml")}


def run(outputs: Path, annotators_config: str, output_path: Path) -> dict[str, Any]:
    """Runs AlpacaEval on ``outputs`` and returns the model's leaderboard row (its
    ``length_controlled_winrate`` is AlpacaEval 2.0's headline number)."""
    with root_log_level_kept():
        from alpaca_eval.main import evaluate

    output_path.mkdir(parents=True, exist_ok=True)
    leaderboard, _ = evaluate(
        model_outputs=str(outputs),
        annotators_config=annotators_config,
        output_path=str(output_path),
        precomputed_leaderboard=None,
        is_return_instead_of_print=True,
    )
    name = json.loads(outputs.read_text())[0]["generator"]
    row = leaderboard.loc[name].to_dict()
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
