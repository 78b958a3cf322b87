"""Tiny models for the offline profile, built locally and deterministically on first use.

``build(cache, spec, corpus)`` trains a byte-level BPE tokenizer with ``tokenizers`` on the bundled
texts, gives it a chat template, and initialises (seeded) a Llama-style causal LM and a
sequence-classification model of the same family with a few hundred thousand parameters. The
result lives in ``<cache>/tiny-<hash>/{policy,reward}/``, where the hash covers the spec and the
corpus, so a changed spec or corpus gets a new build and an unchanged one is reused. Nothing here is
committed: a build takes seconds.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from autorule.core.files import rename_dir_atomic, temporary_sibling
from autorule.core.hashing import digest, file_sha256

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
# Role-tagged turns; an assistant turn ends with <|end|>. add_generation_prompt opens the
# assistant turn, which matches the paper's plain template "<|user|>{prompt}<|assistant|>".
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ROLES = ("policy", "reward")


def corpus_texts(parquet_files: Iterable[Path]) -> list[str]:
    """Prompts and answers of the bundled UltraFeedback copy, in file order."""
    import pandas as pd

    texts: list[str] = []
    for path in parquet_files:
        df = pd.read_parquet(path, columns=["prompt", "chosen", "rejected"])
        for prompt, chosen, rejected in df.itertuples(index=False):
            texts.append(prompt)
            texts.append(chosen[-1]["content"])
            texts.append(rejected[-1]["content"])
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with the tiny chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|end|>",
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build(out: Path, spec: Mapping, texts: list[str]) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tokenizer = train_tokenizer(texts, int(spec["vocab_size"]))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=int(spec["hidden_size"]),
        intermediate_size=int(spec["intermediate_size"]),
        num_hidden_layers=int(spec["num_hidden_layers"]),
        num_attention_heads=int(spec["num_attention_heads"]),
        num_key_value_heads=int(spec["num_key_value_heads"]),
        max_position_embeddings=int(spec["max_position_embeddings"]),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(int(spec["seed"]))
    policy = LlamaForCausalLM(config)
    torch.manual_seed(int(spec["seed"]) + 1)
    reward_config = copy.deepcopy(config)
    reward_config.num_labels = 1  # a scalar reward head (the setter also resets id2label)
    reward = LlamaForSequenceClassification(reward_config)
    for role, model in (("policy", policy), ("reward", reward)):
        model.save_pretrained(out / role)
        tokenizer.save_pretrained(out / role)
    n = sum(p.numel() for p in policy.parameters())
    log.info("built tiny models: %d parameters, vocab %d", n, len(tokenizer))


def build(cache: Path, spec: Mapping, corpus: list[Path]) -> Path:
    """Returns the folder holding ``policy/`` and ``reward/``, building it if needed."""
    key = digest({"spec": dict(spec), "corpus": [file_sha256(p) for p in corpus]})[:12]
    final = Path(cache).expanduser().resolve() / f"tiny-{key}"
    if all((final / role / "config.json").exists() for role in ROLES):
        return final
    tmp = temporary_sibling(final)
    tmp.mkdir(parents=True)
    try:
        _build(tmp, spec, corpus_texts(corpus))
        # False: another process finished the same build first; use theirs.
        rename_dir_atomic(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
