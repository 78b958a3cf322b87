"""LoRA adapters (peft) for the stages that offer them: ``<stage>.lora_rank`` and ``lora_alpha``.

A stage with ``lora_rank`` null trains every weight; with a rank, adapters of that rank on every
linear layer train instead. The trainer saves peft's adapter files as ``model/``;
:func:`merge_adapter` moves them to ``adapter/`` and saves the base model with the adapter merged
in as ``model/``, so every consumer loads a plain model with ``from_pretrained``.

The task type decides what trains besides the adapters: ``CAUSAL_LM`` (grpo's policy) nothing;
``SEQ_CLS`` (a reward model) also the whole score head, new and randomly initialised, which peft
puts in ``modules_to_save`` and keeps out of the adapted layers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from autorule.core.config import ConfigError, check_number
from autorule.training.arguments import MODEL

# The LoRA adapter (peft's files, with a SEQ_CLS model's trained score head), beside model/.
ADAPTER = "adapter"

TASK_TYPES = ("CAUSAL_LM", "SEQ_CLS")


def check(section: Mapping[str, Any], stage: str) -> None:
    """Refuses a rank below 1, an alpha not above 0, or a rank set without peft installed.
    Without a rank the alpha is unused: only a value that is no number at all (NaN) is refused."""
    check_number(section["lora_rank"], f"{stage}.lora_rank", low=1, none_ok=True)
    if section["lora_rank"] is None:
        check_number(section["lora_alpha"], f"{stage}.lora_alpha", integer=False)
        return
    check_number(section["lora_alpha"], f"{stage}.lora_alpha", integer=False, low=0, low_open=True)
    try:
        import peft  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            f"{stage}.lora_rank={section['lora_rank']} trains LoRA through peft, which is not "
            f"installed: pip install 'autorule[lora]' (or set {stage}.lora_rank=null)"
        ) from err


def unused_keys(cfg: Any, stage: str) -> tuple[str, ...]:
    """The LoRA keys that do not decide the output under ``cfg`` (alpha, when no adapter trains):
    left out of the stage's hash."""
    if cfg[stage].get("lora_rank") is None:
        return tuple(
            f"{stage}.{key}"
            for key in ("lora_alpha", "lora_target_modules", "lora_dropout")
            if key in cfg[stage]
        )
    return ()


def describe(section: Mapping[str, Any]) -> list[str]:
    """The dry run's line on LoRA (none for full fine-tuning)."""
    if section["lora_rank"] is None:
        return []
    targets = section.get("lora_target_modules") or "all-linear"
    where = "all linear layers" if targets == "all-linear" else ", ".join(targets)
    return [f"LoRA: rank {section['lora_rank']}, alpha {section['lora_alpha']}, {where}"]


def lora_config(section: Mapping[str, Any], task_type: str):
    """peft's ``LoraConfig`` for ``section``'s rank and alpha (None: every weight trains)."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"LoRA task type {task_type!r}: one of {TASK_TYPES}")
    if section["lora_rank"] is None:
        return None
    from peft import LoraConfig

    # By default every linear layer, attention and MLP alike, as the rubric recipe's LoRA
    # (Thinking Machines' "LoRA Without Regret" finds MLP adapters matter most); a section may
    # name its own modules (lora_target_modules: the released ratings-vs-rankings reward models
    # adapt q_proj and v_proj only). peft leaves the output layer out: the LM head of CAUSAL_LM,
    # the score head of SEQ_CLS (trained whole instead).
    targets = section.get("lora_target_modules") or "all-linear"
    return LoraConfig(
        r=int(section["lora_rank"]),
        lora_alpha=float(section["lora_alpha"]),
        lora_dropout=float(section.get("lora_dropout") or 0.0),
        target_modules=targets if isinstance(targets, str) else [str(t) for t in targets],
        task_type=task_type,
    )


def merge_adapter(workdir: Path, load_base: Callable[[], Any], tokenizer) -> None:
    """Turns the saved adapter into a whole model: ``model/`` (peft's adapter files, as the
    trainer saved them, gathered from every ZeRO stage) moves to ``adapter/``, and the model
    ``load_base()`` returns (the untrained starting model, of the class the stage trains) with
    the adapter merged in is saved as ``model/``, which ``from_pretrained`` loads. Call it on the
    main process only."""
    from peft import PeftModel

    adapter = workdir / ADAPTER
    (workdir / MODEL).rename(adapter)
    merged = PeftModel.from_pretrained(load_base(), str(adapter)).merge_and_unload()
    merged.save_pretrained(str(workdir / MODEL))
    tokenizer.save_pretrained(str(workdir / MODEL))
