"""``llm=hf``: a local transformers causal LM, batched ``generate``.

The tiny profile runs extraction offline with it on the tiny random model (its answers are noise;
the stage then falls back to the example rule file, and says so). With a real instruction-tuned
model it is a slow but dependency-free alternative to ``llm=vllm``.

Verdicts (:meth:`LLM.verdict_all`) need no generation: one forward pass gives the next-token
distribution after each prompt. Requests that share a long prefix (a judge asking about several
rules of one response, conversation first and rule last) are grouped; each group's prefix is run
once and its KV cache copied to every member, so only the members' differing suffixes are
computed again (:func:`last_token_logprobs`). The result is the same as one full forward pass per
request, up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

from autorule.data.model_paths import ensure_pad_token
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
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            device = self.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            tokenizer = AutoTokenizer.from_pretrained(self.model)
            tokenizer.padding_side = "left"  # decoder-only models continue from the right end
            tokenizer.truncation_side = "left"
            ensure_pad_token(tokenizer)
            model = AutoModelForCausalLM.from_pretrained(self.model, dtype=self.dtype)
            self._model, self._tokenizer = model.to(device).eval(), tokenizer
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
        n_out = (new != tokenizer.pad_token_id).sum(dim=1).tolist()
        return [
            Completion(text=t, input_tokens=int(i), output_tokens=int(o))
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

    With ``share_prefix``, groups of consecutive sequences sharing a prefix
    (:func:`group_by_prefix`) run it once; its KV cache (transformers' ``DynamicCache``) is
    copied to each member, whose suffix is then run on top. Without it, every sequence is run
    whole. Positions are given explicitly and the masks keep padding out of every attention, so
    both give what one unpadded forward pass per sequence gives. Prefixes are padded on the right
    (their tokens keep positions 0..p-1), the rows read on the left, so that every row ends at
    the last column and only that column's logits are computed (``logits_to_keep``): the vocabulary
    projection of every other position is wasted work, about half the cost of a tiny model.
    """
    import inspect

    import torch
    from transformers import DynamicCache

    parameters = inspect.signature(model.forward).parameters
    # transformers renamed the forward argument past_key_values to cache (5.2x); the cache object
    # is filled in place either way.
    kwarg = "cache" if "cache" in parameters else "past_key_values"
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    if any(len(seq) == 0 for seq in sequences):
        raise ValueError("cannot score an empty sequence")
    device = model.device

    def padded(rows: Sequence[Sequence[int]], left: bool):
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[j, span] = torch.tensor(list(row), dtype=torch.long)
            mask[j, span] = 1
        return ids.to(device), mask.to(device)

    def read(logits):
        return torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()

    with torch.no_grad():
        # A one-token sequence has no prefix to share (and a prefix row of padding only would
        # attend to nothing: NaNs in the cache).
        if not share_prefix or min(len(s) for s in sequences) < 2:
            ids, mask = padded(sequences, left=True)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, **last_only)
            return read(out.logits)
        groups = group_by_prefix(sequences)  # every prefix holds at least one token
        prefixes = [sequences[members[0]][:prefix] for prefix, members in groups]
        prefix_ids, prefix_mask = padded(prefixes, left=False)
        cache = DynamicCache(config=model.config)
        model(
            input_ids=prefix_ids,
            attention_mask=prefix_mask,
            use_cache=True,
            **{kwarg: cache},
            **last_only,
        )
        order = [g for g, (_, members) in enumerate(groups) for _ in members]
        members = [i for _, group in groups for i in group]
        starts = torch.tensor([groups[g][0] for g in order], device=device)
        cache.reorder_cache(torch.tensor(order, device=device))  # one copy per member
        suffixes = [sequences[i][groups[g][0] :] for i, g in zip(members, order, strict=True)]
        suffix_ids, suffix_mask = padded(suffixes, left=True)
        positions = starts[:, None] + (suffix_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=suffix_ids,
            attention_mask=torch.cat([prefix_mask[order], suffix_mask], dim=1),
            position_ids=positions,
            use_cache=True,
            **{kwarg: cache},
            **last_only,
        )
        result = read(out.logits)
        unsorted = torch.empty_like(result)
        unsorted[torch.tensor(members)] = result
        return unsorted
