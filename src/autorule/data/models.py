"""Resolving model and tokenizer locations from config.

``model.name_or_path`` is a hub id, a local folder laid out like one, or the word ``tiny``, which
builds (once) and uses the tiny local models of :mod:`autorule.data.tiny`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger(__name__)

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


def ensure_pad_token(tokenizer, pad_token: str | None = None):
    """Gives ``tokenizer`` a pad token, in place, and returns it.

    ``pad_token`` (``model.pad_token``) names one that must already be in the vocabulary (Llama-3
    has reserved special tokens for this), so no embedding is added. Without it a tokenizer that
    has none (Llama-3) pads with eos. That is harmless for generation and SFT, whose masks ignore
    padding, but a sequence-classification model then pools at the last token that is not eos,
    i.e. before the final eos: reward models pick another (:func:`ensure_score_pad_token`).
    """
    if pad_token:
        if tokenizer.convert_tokens_to_ids(pad_token) in (None, tokenizer.unk_token_id):
            raise ValueError(
                f"model.pad_token={pad_token!r} is not a token of {tokenizer.name_or_path}; "
                "pick one of its special tokens, or null to pad with eos"
            )
        tokenizer.pad_token = pad_token
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Added as the pad token when a reward model's vocabulary has no unused special token to spare.
ADDED_PAD_TOKEN = "<|autorule_pad|>"


def ensure_score_pad_token(tokenizer, model=None, where: str = "reward model") -> str | None:
    """Makes the pad token of a reward model's ``tokenizer`` differ from eos, in place; returns
    the token it picked, or None when the pad token already differed.

    A sequence-classification model reads its score at the last token that is not padding, so
    padding with eos would read it before the final eos. The pick: an unused reserved special
    token of the vocabulary when it has one (Llama-3's ``<|reserved_special_token_N|>``: no new
    embedding), else a new token ``<|autorule_pad|>``. ``model``, when given, gets embeddings
    for every token of the tokenizer and its ``pad_token_id``. The pick is logged as a warning
    (``where`` names the stage); ``model.pad_token`` chooses one instead.
    """
    picked = None
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        in_use = {tokenizer.eos_token, tokenizer.bos_token, tokenizer.unk_token}
        reserved = sorted(
            (t for t in tokenizer.get_vocab() if "reserved" in t and t not in in_use),
            key=tokenizer.convert_tokens_to_ids,
        )
        if reserved:
            tokenizer.pad_token = reserved[0]
        else:
            tokenizer.add_special_tokens({"pad_token": ADDED_PAD_TOKEN})
        picked = tokenizer.pad_token
        log.warning(
            "[%s] %s pads with eos (%s), which would read the score before eos; padding with "
            "%s instead (%s). Set model.pad_token to choose another.",
            where,
            tokenizer.name_or_path,
            tokenizer.eos_token,
            picked,
            "an unused reserved token" if reserved else "a new token, embeddings resized",
        )
    if model is not None:
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
    return picked


def resolve_device(device: str | None) -> str:
    """``device`` itself, or for ``auto`` / None: cuda when there is one, else cpu."""
    if device and device != "auto":
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_generator(model: str, tokenizer: str | None = None, dtype="auto", device="auto"):
    """A causal LM in eval mode on ``device`` and its tokenizer set up for batched generation:
    padded and truncated on the left (decoder-only models continue from the right end), with a
    pad token (:func:`ensure_pad_token`). Returns ``(model, tokenizer)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer or model)
    tok.padding_side = "left"
    tok.truncation_side = "left"
    ensure_pad_token(tok)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
    return lm.to(resolve_device(device)).eval(), tok


def load_tokenizer(cfg: DictConfig, role: str = "policy", name_or_path: str | None = None):
    """The tokenizer of ``role`` (or of the folder ``name_or_path``), with its pad token set
    (:func:`ensure_pad_token`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path or resolve(cfg, role))
    return ensure_pad_token(tokenizer, cfg.model.get("pad_token"))
