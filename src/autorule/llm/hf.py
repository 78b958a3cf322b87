"""``llm=hf``: a local transformers causal LM, batched ``generate``.

The tiny profile runs extraction offline with it on the tiny random model (its answers are noise;
the stage then falls back to the example rule file, and says so). With a real instruction-tuned
model it is a slow but dependency-free alternative to ``llm=vllm``.
"""

from __future__ import annotations

from autorule.data.model_paths import ensure_pad_token
from autorule.llm.base import Completion, LocalLLM, Messages


class HFLLM(LocalLLM):
    """Batched generation with ``transformers``."""

    backend = "hf"

    def __init__(
        self,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_input_tokens: int | None = None,
        seed: int = 0,
        **common,
    ):
        super().__init__(**common)
        self.device, self.dtype = device, dtype
        self.max_input_tokens, self.seed = max_input_tokens, int(seed)
        self._model = self._tokenizer = None

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
