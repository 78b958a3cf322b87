"""SFT training throughput, packed against padded, and model FLOPs utilisation (MFU).

Used by the packing benchmark (tests/benchmarks/bench_packing.py, tiny model on CPU) and by
``scripts/gpu_check.sh`` (a ~0.5B random-initialised Llama on one GPU). Rows are random token
ids with UltraFeedback-like lengths (:func:`uf_like_lengths`); each optimizer step trains on
``rows_per_step`` of them, either padded to the longest row of the step (the trainers' default
collation) or laid end to end in one padding-free row whose position ids restart at every row
(TRL's ``DataCollatorForLanguageModeling(padding_free=True)``, what ``sft.packing`` and
``sft.padding_free`` use). Only real tokens count towards tokens/s; the padding share is the
share of the padded batches' positions that are padding.

MFU = achieved FLOP/s / the device's peak FLOP/s, with the training FLOPs per real token of
PaLM (Chowdhery et al., 2022, appendix B): 6 N + 6 L T d, N the parameters outside the
embeddings, L layers, d the hidden size and T the length each token attends over (here the
average row length, since a packed row attends only within itself; causal attention halves
PaLM's 12 L T d).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

# UltraFeedback's prompt + chosen answer in Llama-3 tokens: a long right tail, most rows a few
# hundred tokens, capped by the preprocess filter (under 512 each for prompt and answer).
UF_MEDIAN_TOKENS = 300
UF_SIGMA = 0.6
UF_MIN_TOKENS, UF_MAX_TOKENS = 24, 1024

# Dense bf16 peak FLOP/s of GPUs the check knows (NVIDIA data sheets, without sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
}


def uf_like_lengths(n: int, seed: int = 0, scale: float = 1.0) -> list[int]:
    """``n`` row lengths drawn log-normally around UltraFeedback's (``scale`` shrinks them for
    a small model's context)."""
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(np.log(UF_MEDIAN_TOKENS * scale), UF_SIGMA, size=n)
    low, high = max(2, int(UF_MIN_TOKENS * scale)), max(3, int(UF_MAX_TOKENS * scale))
    return [int(x) for x in np.clip(lengths, low, high)]


def training_flops_per_token(config, attended: float) -> float:
    """6 N + 6 L T d (see the module docstring); ``config`` a transformers model config."""
    d, layers = int(config.hidden_size), int(config.num_hidden_layers)
    heads, kv_heads = int(config.num_attention_heads), int(config.num_key_value_heads)
    head_dim = d // heads
    attention = d * head_dim * (2 * heads + 2 * kv_heads)  # q, o and the grouped k, v
    mlp = 3 * d * int(config.intermediate_size)  # gate, up, down
    n = layers * (attention + mlp)
    return 6.0 * n + 6.0 * layers * attended * d


def peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named ``device_name`` (None when not known)."""
    for name, flops in PEAK_BF16_FLOPS.items():
        if name in device_name:
            return flops
    return None


@dataclass
class Throughput:
    layout: str  # packed or padded
    steps: int  # timed optimizer steps
    real_tokens: int  # tokens of the rows themselves, over the timed steps
    positions: int  # positions the model computed (real tokens + padding)
    seconds: float
    tokens_per_s: float
    padding_share: float  # padding / positions
    flops_per_token: float
    mfu: float | None  # None without a known peak (CPU, an unknown GPU)

    def as_dict(self) -> dict:
        return asdict(self)


def batches(lengths: list[int], rows_per_step: int, vocab: int, seed: int = 0):
    """Rows of random token ids (as lists), ``rows_per_step`` at a time."""
    rng = np.random.default_rng(seed + 1)
    for start in range(0, len(lengths) - rows_per_step + 1, rows_per_step):
        yield [
            rng.integers(3, vocab, size=n).tolist() for n in lengths[start : start + rows_per_step]
        ]


def collate(rows: list[list[int]], packed: bool, pad_id: int):
    """One batch as TRL's language-modelling collator builds it: padded, or padding-free."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=packed)
    return collator([{"input_ids": row} for row in rows])


def measure(
    model,
    lengths: list[int],
    rows_per_step: int,
    packed: bool,
    device: str = "cpu",
    warmup: int = 1,
    peak: float | None = None,
    pad_id: int = 0,
) -> Throughput:
    """Trains ``model`` (AdamW, lr 1e-5) on rows of ``lengths`` and times every step after the
    first ``warmup``."""
    import torch

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    vocab = int(model.config.vocab_size)
    real = positions = steps = 0
    seconds = 0.0
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for index, rows in enumerate(batches(lengths, rows_per_step, vocab)):
        batch = collate(rows, packed, pad_id)
        inputs = {k: v.to(device) for k, v in batch.items() if hasattr(v, "to")}
        sync()
        start = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if index >= warmup:
            seconds += time.perf_counter() - start
            real += sum(len(row) for row in rows)
            positions += int(batch["input_ids"].numel())
            steps += 1
    if not steps:
        raise ValueError(f"{len(lengths)} rows make no timed step at {rows_per_step} per step")
    flops = training_flops_per_token(model.config, attended=float(np.mean(lengths)))
    rate = real / seconds
    return Throughput(
        layout="packed" if packed else "padded",
        steps=steps,
        real_tokens=real,
        positions=positions,
        seconds=seconds,
        tokens_per_s=rate,
        padding_share=1 - real / positions,
        flops_per_token=flops,
        mfu=rate * flops / peak if peak else None,
    )


def random_llama(
    hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, vocab: int, dtype=None
):
    """A randomly initialised Llama (``LlamaForCausalLM``) of the given shape."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        max_position_embeddings=max(2048, UF_MAX_TOKENS * 2),
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(dtype or torch.float32)
