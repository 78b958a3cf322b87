"""Sampling responses from a causal LM: vLLM's offline engine when it is installed and a GPU is
present, batched ``transformers.generate`` otherwise.

Prompts are plain text already in the policy's template (``<|user|>{prompt}<|assistant|>``): no
chat template is applied, because the paper's models were trained on exactly that text. They are
tokenized as the SFT trainer tokenized them (the tokenizer's own special tokens added, e.g.
Llama-3's BOS). Multi-turn conversations (MT-Bench) are sampled turn by turn: each later turn's
prompt is the earlier turns, each user turn in the template followed by the model's answer, with no
separator (FastChat's ``NO_COLON_SINGLE`` style; see :mod:`autorule.evaluation.mt_bench`).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

BACKENDS = ("auto", "vllm", "hf")
# generate.dtype -> torch dtype name
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "auto": "auto"}


@dataclass(frozen=True)
class Sampling:
    """What decides the samples (saved beside the responses)."""

    temperature: float
    top_p: float
    max_new_tokens: int
    n: int = 1  # samples per prompt
    seed: int = 0
    dtype: str = "auto"
    stop: tuple[str, ...] = ()  # strings that end an answer (the next turn's marker)

    def as_dict(self) -> dict:
        return {**asdict(self), "stop": list(self.stop)}


@dataclass
class Sample:
    """One sampled answer."""

    text: str
    output_tokens: int
    finished: bool  # ended by eos or a stop string, not by the token budget


@dataclass
class Conversation:
    """One prompt of a prompt set: its user turns (one, or several for MT-Bench)."""

    id: str
    turns: list[str]
    meta: dict = field(default_factory=dict)  # category, dataset, ... carried to the outputs


def vllm_available() -> bool:
    """Whether vLLM can run here (installed, and a CUDA device present)."""
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pick_backend(backend: str) -> str:
    """The backend that runs: ``auto`` is vLLM when it can run, else transformers."""
    if backend not in BACKENDS:
        raise ValueError(f"generate.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "vllm" if vllm_available() else "hf"
    if backend == "vllm" and not vllm_available():
        raise RuntimeError(
            "generate.backend=vllm needs vLLM and a CUDA GPU (pip install 'autorule[vllm]'); "
            "use generate.backend=hf or auto"
        )
    return backend


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if not cuts:
        return text, False
    return text[: min(cuts)], True


def later_turn_prompt(template: str, turns: Sequence[str], answers: Sequence[str]) -> str:
    """The prompt of turn ``len(answers)``: every earlier turn in ``template`` followed by its
    answer, then the current turn in ``template``."""
    done = "".join(
        template.replace("{prompt}", q) + a for q, a in zip(turns, answers, strict=False)
    )
    return done + template.replace("{prompt}", turns[len(answers)])


class Generator:
    """Samples from one model; ``close()`` frees it."""

    def __init__(
        self,
        model: str,
        sampling: Sampling,
        *,
        backend: str = "auto",
        batch_size: int = 16,
        device: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        tokenizer: str | None = None,
    ):
        self.model, self.sampling = str(model), sampling
        self.backend = pick_backend(backend)
        self.batch_size = max(1, int(batch_size))
        self.device = device
        self.tensor_parallel_size = int(tensor_parallel_size)
        self.gpu_memory_utilization = float(gpu_memory_utilization)
        self.max_model_len = max_model_len
        self.tokenizer_name = tokenizer or self.model
        self._engine = self._model = self._tokenizer = None

    # ----------------------------------------------------------------------------------------
    # Conversations

    def conversations(
        self,
        items: Sequence[Conversation],
        format_prompt: Callable[[Sequence[str], Sequence[str]], str],
        temperatures: Sequence[float] | None = None,
    ) -> list[list[list[Sample]]]:
        """Samples every conversation turn by turn: item -> turn -> its ``sampling.n`` samples.

        ``format_prompt(turns, answers)`` is the prompt of turn ``len(answers)`` (e.g.
        :func:`later_turn_prompt` with the plain template). ``temperatures``: one per item
        (MT-Bench categories), else the sampling's. With n > 1 only single-turn items are allowed
        (which of n answers would the next turn continue?).
        """
        if self.sampling.n > 1 and any(len(c.turns) > 1 for c in items):
            raise ValueError("several samples per prompt (best-of-N) need single-turn prompts")
        out: list[list[list[Sample]]] = [[] for _ in items]
        depth = max((len(c.turns) for c in items), default=0)
        for turn in range(depth):
            todo = [i for i, c in enumerate(items) if len(c.turns) > turn]
            prompts = [format_prompt(items[i].turns, [t[0].text for t in out[i]]) for i in todo]
            temps = [temperatures[i] for i in todo] if temperatures is not None else None
            for i, samples in zip(todo, self.sample(prompts, temps), strict=True):
                out[i].append(samples)
        return out

    def sample(
        self, prompts: Sequence[str], temperatures: Sequence[float] | None = None
    ) -> list[list[Sample]]:
        """``sampling.n`` samples for each prompt, grouped by temperature."""
        if not prompts:
            return []
        temps = list(temperatures) if temperatures is not None else None
        groups: dict[float, list[int]] = {}
        for i in range(len(prompts)):
            t = float(temps[i]) if temps is not None else self.sampling.temperature
            groups.setdefault(t, []).append(i)
        out: list[list[Sample] | None] = [None] * len(prompts)
        for temperature, idx in groups.items():
            run = self._vllm if self.backend == "vllm" else self._hf
            for i, samples in zip(idx, run([prompts[i] for i in idx], temperature), strict=True):
                out[i] = samples
        return out  # type: ignore[return-value]

    # ----------------------------------------------------------------------------------------
    # transformers

    def _load_hf(self):
        if self._model is None:
            import torch

            from autorule.data.models import load_generator

            self._model, self._tokenizer = load_generator(
                self.model,
                self.tokenizer_name,
                dtype=DTYPES.get(self.sampling.dtype, self.sampling.dtype),
                device=self.device,
            )
            torch.manual_seed(self.sampling.seed)
        return self._model, self._tokenizer

    def _hf(self, prompts: Sequence[str], temperature: float) -> list[list[Sample]]:
        import torch

        model, tokenizer = self._load_hf()
        s = self.sampling
        context = self.max_model_len or getattr(model.config, "max_position_embeddings", 4096)
        limit = max(1, int(context) - s.max_new_tokens)
        specials = [t for t in tokenizer.all_special_tokens if t]
        out: list[list[Sample]] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = list(prompts[start : start + self.batch_size])
            enc = tokenizer(
                batch, return_tensors="pt", padding=True, truncation=True, max_length=limit
            ).to(model.device)
            sampling = (
                {"do_sample": True, "temperature": temperature, "top_p": s.top_p}
                if temperature > 0
                else {"do_sample": False}
            )
            with torch.no_grad():
                ids = model.generate(
                    **enc,
                    max_new_tokens=s.max_new_tokens,
                    num_return_sequences=s.n,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **sampling,
                )
            new = ids[:, enc["input_ids"].shape[1] :].tolist()
            for k in range(len(batch)):
                samples = []
                for row in new[k * s.n : (k + 1) * s.n]:
                    ended = tokenizer.eos_token_id in row
                    tokens = row[: row.index(tokenizer.eos_token_id)] if ended else row
                    tokens = [t for t in tokens if t != tokenizer.pad_token_id]
                    text = tokenizer.decode(tokens, skip_special_tokens=False)
                    text, stopped = cut_at_stop(text, s.stop)
                    for special in specials:
                        text = text.replace(special, "")
                    samples.append(Sample(text.strip(), len(tokens), ended or stopped))
                out.append(samples)
        return out

    # ----------------------------------------------------------------------------------------
    # vLLM

    def _vllm(self, prompts: Sequence[str], temperature: float) -> list[list[Sample]]:
        from vllm import LLM, SamplingParams

        s = self.sampling
        if self._engine is None:
            self._engine = LLM(
                model=self.model,
                tokenizer=self.tokenizer_name,
                dtype=DTYPES.get(s.dtype, s.dtype),
                seed=s.seed,
                tensor_parallel_size=self.tensor_parallel_size,
                gpu_memory_utilization=self.gpu_memory_utilization,
                max_model_len=self.max_model_len,
            )
        params = SamplingParams(
            n=s.n,
            temperature=temperature,
            top_p=s.top_p,
            max_tokens=s.max_new_tokens,
            seed=s.seed,
            stop=list(s.stop) or None,
        )
        results = self._engine.generate(list(prompts), params)
        return [
            [
                Sample(o.text.strip(), len(o.token_ids), o.finish_reason == "stop")
                for o in result.outputs
            ]
            for result in results
        ]

    def close(self) -> None:
        """Frees the model (the next model of a run needs the memory)."""
        if self._engine is not None:
            # vLLM keeps its distributed state and KV cache until told otherwise; a second engine
            # in the same process would not find the memory.
            try:
                from vllm.distributed.parallel_state import (
                    destroy_distributed_environment,
                    destroy_model_parallel,
                )

                destroy_model_parallel()
                destroy_distributed_environment()
            except ImportError:
                pass
        self._engine = self._model = self._tokenizer = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def best_index(scores: Sequence[float]) -> int:
    """The index of the highest score (the first on ties); NaN scores never win."""
    best, best_score = 0, float("-inf")
    for i, score in enumerate(scores):
        if score == score and score > best_score:  # score == score: not NaN
            best, best_score = i, score
    return best
