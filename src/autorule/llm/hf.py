"""``llm=hf``: a local transformers causal LM, batched ``generate``.

The tiny profile runs extraction offline with it on the tiny random model (its answers are noise;
the stage then falls back to the example rule file, and says so). With a real instruction-tuned
model it is a slow but dependency-free alternative to ``llm=vllm``.

Verdicts (:meth:`LLM.verdict_all`) need no generation: one forward pass gives the next-token
distribution after each prompt. Requests that share a long prefix (a judge asking about several
rules of one response, conversation first and rule last) are grouped; each group's prefix runs
once, and only the members' differing suffixes run on top of its KV cache
(:func:`last_token_logprobs`). The result is the same as one full forward pass per request, up
to float rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from autorule.data.models import load_generator
from autorule.llm.base import Completion, LocalLLM, Messages, Verdict, verdict_token_ids

log = logging.getLogger(__name__)


class HFLLM(LocalLLM):
    """Batched generation with ``transformers``."""

    backend = "hf"
    supports_verdicts = True

    def __init__(
        self,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_input_tokens: int | None = None,
        seed: int = 0,
        verdict_batch_size: int | None = None,
        **common,
    ):
        super().__init__(**common)
        # Verdict batches are cheaper per request than generate() batches (two forward passes,
        # the shared prefixes run once), so they take more requests at a time.
        self._verdict_batch_size = max(1, int(verdict_batch_size or self.batch_size))
        self.device, self.dtype = device, dtype
        self.max_input_tokens, self.seed = max_input_tokens, int(seed)
        self._model = self._tokenizer = None
        self._verdict_ids: dict[tuple[str, ...], list[list[int]]] = {}

    @property
    def verdict_batch_size(self) -> int:
        return self._verdict_batch_size

    def _load(self):
        if self._model is None:
            self._model, self._tokenizer = load_generator(
                self.model, dtype=self.dtype, device=self.device
            )
        return self._model, self._tokenizer

    def _prompt(self, tokenizer, messages: Messages) -> str:
        """The request as the model reads it; a final assistant message is continued (the
        opening of the reply put in by the caller), not closed."""
        if tokenizer.chat_template:
            continuing = messages[-1]["role"] == "assistant"
            return tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=not continuing,
                continue_final_message=continuing,
            )
        return "\n\n".join(m["content"] for m in messages)

    def generate_batch(self, batch: list[Messages]) -> list[Completion]:
        import torch

        model, tokenizer = self._load()
        context = getattr(model.config, "max_position_embeddings", None) or 4096
        limit = self.max_input_tokens or max(1, context - self.max_tokens)
        enc = tokenizer(
            [self._prompt(tokenizer, m) for m in batch],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=limit,
            add_special_tokens=False,
        ).to(model.device)
        torch.manual_seed(self.seed)
        sampling = (
            {"do_sample": True, "temperature": self.temperature}
            if self.temperature > 0
            else {"do_sample": False}
        )
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=self.max_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        n_in = enc["attention_mask"].sum(dim=1).tolist()
        # The stop token is generated too, but not counted when it doubles as the pad token.
        n_out = [max(1, n) for n in (new != tokenizer.pad_token_id).sum(dim=1).tolist()]
        return [
            Completion(
                text=t,
                input_tokens=int(i),
                output_tokens=int(o),
                finish_reason="length" if o >= self.max_tokens else "stop",
            )
            for t, i, o in zip(texts, n_in, n_out, strict=True)
        ]

    def _input_limit(self, model) -> int:
        context = getattr(model.config, "max_position_embeddings", None) or 4096
        return self.max_input_tokens or max(1, context - self.max_tokens)

    def input_limit(self) -> int:
        """Prompt tokens the model takes (read from its config, without loading the weights):
        callers that must keep a prompt's start or end cut it to this themselves."""
        if self._model is not None:
            return self._input_limit(self._model)
        from transformers import AutoConfig

        context = getattr(AutoConfig.from_pretrained(self.model), "max_position_embeddings", None)
        return self.max_input_tokens or max(1, (context or 4096) - self.max_tokens)

    def verdict_batch(self, batch: list[Messages], verdict: Verdict) -> list[Completion]:
        choices, _ = verdict  # the whole distribution is read: no top-k cut-off
        model, tokenizer = self._load()
        limit = self._input_limit(model)
        # Cut from the left, as generate_batch does (callers that must keep the start of their
        # prompt, like the rule judge, shorten it themselves first).
        encoded = tokenizer([self._prompt(tokenizer, m) for m in batch], add_special_tokens=False)
        over = sum(len(ids) > limit for ids in encoded["input_ids"])
        if over:
            log.warning("hf: %d prompt(s) over %d tokens lost their start", over, limit)
        sequences = [ids[-limit:] for ids in encoded["input_ids"]]
        if choices not in self._verdict_ids:
            self._verdict_ids[choices] = verdict_token_ids(tokenizer, choices)
        token_ids = self._verdict_ids[choices]
        logprobs = last_token_logprobs(model, sequences, tokenizer.pad_token_id)
        return [
            Completion(
                choice_logprobs={
                    c: float(row[ids].logsumexp(0)) if ids else None
                    for c, ids in zip(choices, token_ids, strict=True)
                },
                input_tokens=len(sequence),
            )
            for row, sequence in zip(logprobs, sequences, strict=True)
        ]


def group_by_prefix(sequences: Sequence[Sequence[int]]) -> list[tuple[int, list[int]]]:
    """Consecutive sequences grouped to share a prefix: ``(prefix length, member indices)``.

    Greedy on cost: a sequence joins the current group when the tokens it saves (the shared
    prefix it need not recompute) exceed what it costs the members already there (each must
    recompute what the prefix shrinks by). Each member keeps at least its last token outside the
    prefix, since that token's output is the one read. Any grouping gives the same result; this
    one only decides the cost.
    """
    groups: list[tuple[int, list[int]]] = []
    first: Sequence[int] = ()
    for i, seq in enumerate(sequences):
        if groups:
            prefix, members = groups[-1]
            limit = min(prefix, len(seq) - 1)
            shared = 0
            while shared < limit and first[shared] == seq[shared]:
                shared += 1
            if len(members) * (prefix - shared) < shared:
                groups[-1] = (shared, [*members, i])
                continue
        groups.append((len(seq) - 1, [i]))
        first = seq
    return groups


def last_token_logprobs(
    model, sequences: Sequence[Sequence[int]], pad_id: int, share_prefix: bool = True
):
    """Log-softmax of the next-token logits after each sequence: a float32 (n, vocab) tensor.

    With ``share_prefix``, consecutive sequences that share a prefix are grouped
    (:func:`group_by_prefix`) and each group's prefix runs once, into a KV cache (transformers'
    ``DynamicCache``, one row per group): :func:`_prefix_cache`. A second forward pass then runs
    every member's suffix on top of it, the suffixes of a group packed side by side in the
    group's row (:func:`_packed_suffixes`): an attention mask lets each suffix token see the
    prefix and the earlier tokens of its own suffix only, and each suffix's positions continue
    from the end of the prefix. The prefix's keys and values are thus neither recomputed nor
    copied per member. Without ``share_prefix``, every sequence runs whole (left-padded, explicit
    positions): :func:`_whole_sequences`. Either way only the logits that are read are computed
    (``logits_to_keep``), and the result is what one unpadded forward pass per sequence gives, up
    to float rounding.
    """
    import torch

    if any(len(seq) == 0 for seq in sequences):
        raise ValueError("cannot score an empty sequence")
    forward = _Forward(model)
    with torch.no_grad():
        # A one-token sequence has no prefix to share.
        if not share_prefix or min(len(s) for s in sequences) < 2:
            logits = _whole_sequences(forward, sequences, pad_id)
        else:
            groups = group_by_prefix(sequences)  # every prefix holds at least one token
            cache, width = _prefix_cache(forward, sequences, groups, pad_id)
            logits = _packed_suffixes(forward, sequences, groups, cache, width, pad_id)
    return torch.log_softmax(logits.float(), dim=-1).cpu()


class _Forward:
    """One model's forward call with the keyword names its transformers version takes."""

    def __init__(self, model):
        import inspect

        parameters = inspect.signature(model.forward).parameters
        self.model, self.device = model, model.device
        # transformers renamed the forward argument past_key_values to cache (5.2x); the cache
        # object is filled in place either way.
        self.cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self.can_keep = "logits_to_keep" in parameters

    def __call__(self, keep=None, cache=None, **inputs):
        extra = {}
        if cache is not None:
            extra = {"use_cache": True, self.cache_kwarg: cache}
        if keep is not None and self.can_keep:
            extra["logits_to_keep"] = keep
        tensors = {name: value.to(self.device) for name, value in inputs.items()}
        return self.model(**tensors, **extra)


def _whole_sequences(forward: _Forward, sequences: Sequence[Sequence[int]], pad_id: int):
    """The last logits of each sequence run whole, left-padded with explicit positions."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, seq in enumerate(sequences):
        ids[j, width - len(seq) :] = torch.tensor(list(seq))
        mask[j, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = forward(keep=1, input_ids=ids, attention_mask=mask, position_ids=positions)
    return out.logits[:, -1]


def _prefix_cache(
    forward: _Forward,
    sequences: Sequence[Sequence[int]],
    groups: list[tuple[int, list[int]]],
    pad_id: int,
):
    """Step 1: the groups' prefixes, padded on the right (positions 0..p-1), run into a
    ``DynamicCache`` with one row per group; returns it and its width."""
    import torch
    from transformers import DynamicCache

    width = max(prefix for prefix, _ in groups)
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for g, (prefix, members) in enumerate(groups):
        ids[g, :prefix] = torch.tensor(list(sequences[members[0]][:prefix]))
        mask[g, :prefix] = 1
    cache = DynamicCache(config=forward.model.config)
    forward(keep=1, cache=cache, input_ids=ids, attention_mask=mask)
    return cache, width


def _packed_suffixes(
    forward: _Forward,
    sequences: Sequence[Sequence[int]],
    groups: list[tuple[int, list[int]]],
    cache,
    width: int,
    pad_id: int,
):
    """Step 2: each group's suffixes side by side in one row, on top of its prefix; the logits
    at every sequence's last token, in the order of ``sequences``."""
    import torch

    length = max(sum(len(sequences[i]) - prefix for i in members) for prefix, members in groups)
    ids = torch.full((len(groups), length), pad_id, dtype=torch.long)
    positions = torch.zeros_like(ids)
    allowed = torch.zeros((len(groups), 1, length, width + length), dtype=torch.bool)
    last: dict[int, tuple[int, int]] = {}  # sequence -> (row, column of its last token)
    for g, (prefix, members) in enumerate(groups):
        allowed[g, 0, :, :prefix] = True  # every token sees the prefix (padding: only it)
        start = 0
        for i in members:
            suffix = sequences[i][prefix:]
            end = start + len(suffix)
            ids[g, start:end] = torch.tensor(list(suffix))
            positions[g, start:end] = prefix + torch.arange(len(suffix))
            causal = torch.ones((len(suffix), len(suffix)), dtype=torch.bool).tril()
            allowed[g, 0, start:end, width + start : width + end] = causal
            last[i] = (g, end - 1)
            start = end
    columns = sorted({column for _, column in last.values()})
    # An additive mask (0 = attend): the form eager and sdpa attention both take as is.
    dtype = next(forward.model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    keep = torch.tensor(columns, device=forward.device)
    out = forward(
        keep=keep, cache=cache, input_ids=ids, attention_mask=mask, position_ids=positions
    )
    index = {column: k for k, column in enumerate(columns)} if forward.can_keep else None
    rows = [last[i] for i in range(len(sequences))]
    return torch.stack([out.logits[g, index[column] if index else column] for g, column in rows])
