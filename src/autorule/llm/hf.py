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

from collections.abc import Sequence

from autorule.data.models import load_generator
from autorule.llm.base import Completion, LocalLLM, Messages, Verdict


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
        if tokenizer.chat_template:
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
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

    def verdict_batch(self, batch: list[Messages], verdict: Verdict) -> list[Completion]:
        choices, _ = verdict  # the whole distribution is read: no top-k cut-off
        model, tokenizer = self._load()
        limit = self._input_limit(model)
        # Cut from the left, as generate_batch does (callers that must keep the start of their
        # prompt, like the rule judge, shorten it themselves first).
        encoded = tokenizer([self._prompt(tokenizer, m) for m in batch], add_special_tokens=False)
        sequences = [ids[-limit:] for ids in encoded["input_ids"]]
        token_ids = choice_token_ids(tokenizer, choices)
        logprobs = last_token_logprobs(model, sequences, tokenizer.pad_token_id)
        return [
            Completion(
                choice_logprobs={c: float(row[t]) for c, t in zip(choices, token_ids, strict=True)},
                input_tokens=len(ids),
            )
            for row, ids in zip(logprobs.tolist(), sequences, strict=True)
        ]


def choice_token_ids(tokenizer, choices: Sequence[str]) -> list[int]:
    """The first token of each choice as the reply would start with it (no leading space).

    Raises ValueError when two choices start with the same token: their probabilities could not
    be told apart.
    """
    ids = []
    for choice in choices:
        encoded = tokenizer(choice, add_special_tokens=False)["input_ids"]
        if not encoded:
            raise ValueError(f"verdict choice {choice!r} encodes to no token")
        ids.append(encoded[0])
    if len(set(ids)) < len(ids):
        raise ValueError(f"verdict choices {list(choices)} share a first token: {ids}")
    return ids


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
    ``DynamicCache``, one row per group). A second forward pass then runs every member's suffix
    on top of it, the suffixes of a group packed side by side in the group's row: an attention
    mask lets each suffix token see the prefix and the earlier tokens of its own suffix only, and
    each suffix's positions continue from the end of the prefix. The prefix's keys and values are
    thus neither recomputed nor copied per member. Without ``share_prefix``, every sequence runs
    whole (left-padded, explicit positions). Either way only the logits that are read are
    computed (``logits_to_keep``), and the result is what one unpadded forward pass per sequence
    gives, up to float rounding.
    """
    import inspect

    import torch
    from transformers import DynamicCache

    parameters = inspect.signature(model.forward).parameters
    # transformers renamed the forward argument past_key_values to cache (5.2x); the cache object
    # is filled in place either way.
    kwarg = "cache" if "cache" in parameters else "past_key_values"
    can_keep = "logits_to_keep" in parameters
    if any(len(seq) == 0 for seq in sequences):
        raise ValueError("cannot score an empty sequence")
    device = model.device
    log_softmax = lambda logits: torch.log_softmax(logits.float(), dim=-1).cpu()  # noqa: E731

    with torch.no_grad():
        # A one-token sequence has no prefix to share.
        if not share_prefix or min(len(s) for s in sequences) < 2:
            width = max(len(s) for s in sequences)
            ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, seq in enumerate(sequences):
                ids[j, width - len(seq) :] = torch.tensor(list(seq))
                mask[j, width - len(seq) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                **({"logits_to_keep": 1} if can_keep else {}),
            )
            return log_softmax(out.logits[:, -1])

        # 1. The groups' prefixes, padded on the right (positions 0..p-1), into the cache.
        groups = group_by_prefix(sequences)  # every prefix holds at least one token
        width = max(prefix for prefix, _ in groups)
        prefix_ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
        prefix_mask = torch.zeros_like(prefix_ids)
        for g, (prefix, members) in enumerate(groups):
            prefix_ids[g, :prefix] = torch.tensor(list(sequences[members[0]][:prefix]))
            prefix_mask[g, :prefix] = 1
        cache = DynamicCache(config=model.config)
        model(
            input_ids=prefix_ids.to(device),
            attention_mask=prefix_mask.to(device),
            use_cache=True,
            **{kwarg: cache},
            **({"logits_to_keep": 1} if can_keep else {}),
        )

        # 2. Each group's suffixes side by side in one row, on top of its prefix.
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
        keep = {"logits_to_keep": torch.tensor(columns, device=device)} if can_keep else {}
        # An additive mask (0 = attend): the form eager and sdpa attention both take as is.
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        out = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=True,
            **{kwarg: cache},
            **keep,
        )
        index = {column: k for k, column in enumerate(columns)} if can_keep else None
        rows = [last[i] for i in range(len(sequences))]
        picked = torch.stack(
            [out.logits[g, index[column] if index else column] for g, column in rows]
        )
        return log_softmax(picked)
