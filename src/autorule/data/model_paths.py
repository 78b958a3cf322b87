"""Resolving model and tokenizer locations from config.

``model.name_or_path`` is a hub id, a local folder laid out like one, or the word ``tiny``, which
builds (once) and uses the tiny local models of :mod:`autorule.data.tiny`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

TINY = "tiny"


def tiny_corpus(cfg: DictConfig) -> list[Path]:
    """The files the tiny tokenizer is trained on: the bundled UltraFeedback training splits."""
    corpus_dir = Path(cfg.paths.data) / "ultrafeedback_binarized" / "data"
    corpus = sorted(corpus_dir.glob("train_*-00000-of-00001.parquet"))
    if not corpus:
        raise FileNotFoundError(
            f"{corpus_dir} holds no train_*.parquet files to train the tiny tokenizer on "
            "(key paths.data); regenerate the bundled data with `make data`"
        )
    return corpus


def resolve(cfg: DictConfig, role: str = "policy", name_or_path: str | None = None) -> str:
    """Hub id or folder for ``role`` (``policy`` or ``reward``) of the configured model."""
    name = name_or_path or str(cfg.model.name_or_path)
    if name != TINY:
        return name
    from autorule.data import tiny

    return str(tiny.build(Path(cfg.paths.cache), dict(cfg.model.tiny), tiny_corpus(cfg)) / role)


def load_tokenizer(cfg: DictConfig, role: str = "policy"):
    """The configured tokenizer (pad token set: falls back to eos, as Llama-3 needs)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve(cfg, role))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
