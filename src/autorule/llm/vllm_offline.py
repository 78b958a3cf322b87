"""``llm=vllm``: vLLM's offline engine (``vllm.LLM``) on local GPUs.

vLLM is an optional extra (``pip install 'autorule[vllm]'``) and is imported only here, when this
backend is built. Requests are sent to the engine in chunks of ``batch_size`` (vLLM schedules each
chunk continuously) so answers reach the response cache as chunks finish; an interrupted run
resumes from the last finished chunk.

Verdicts (:meth:`LLM.verdict_all`) generate one token with ``logprobs`` alternatives and read the
choices among them; vLLM's prefix caching computes the prefix that a judge's requests about one
response share only once.
"""

from __future__ import annotations

from autorule.llm.base import Completion, LocalLLM, Messages, Verdict, choice_logprobs

INSTALL_HINT = "llm=vllm needs vLLM, an optional extra: pip install 'autorule[vllm]'"


def import_vllm():
    """The ``vllm`` module, or an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err
    return vllm


class VLLMOfflineLLM(LocalLLM):
    """Batched chat generation with the vLLM engine."""

    backend = "vllm"
    supports_verdicts = True

    def __init__(
        self,
        *,
        top_p: float = 1.0,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        seed: int = 0,
        **common,
    ):
        super().__init__(**common)
        vllm = import_vllm()  # fail at start-up, not after the first cache misses
        self.top_p, self.seed = float(top_p), int(seed)
        self.sampling = vllm.SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )
        self._engine_args = {
            "model": self.model,
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "seed": self.seed,
        }
        self._engine = None

    def _engine_or_start(self):
        # Built on the first cache miss, so a fully cached run loads no weights and needs no GPU.
        # It still needs vllm installed and importable: the constructor imports it.
        if self._engine is None:
            self._engine = import_vllm().LLM(**self._engine_args)
        return self._engine

    def verdict_batch(self, batch: list[Messages], verdict: Verdict) -> list[Completion]:
        choices, top_logprobs = verdict
        sampling = import_vllm().SamplingParams(
            temperature=self.temperature, max_tokens=1, logprobs=top_logprobs, seed=self.seed
        )
        outputs = self._engine_or_start().chat(batch, sampling, use_tqdm=False, **continuing(batch))
        completions = []
        for o in outputs:
            first = (o.outputs[0].logprobs or [{}])[0]  # token id -> Logprob, for the first token
            candidates = [(lp.decoded_token or "", lp.logprob) for lp in first.values()]
            completions.append(
                Completion(
                    text=o.outputs[0].text,
                    choice_logprobs=choice_logprobs(candidates, choices),
                    input_tokens=len(o.prompt_token_ids or ()),
                )
            )
        return completions

    def generate_batch(self, batch: list[Messages]) -> list[Completion]:
        outputs = self._engine_or_start().chat(
            batch, self.sampling, use_tqdm=False, **continuing(batch)
        )
        return [
            Completion(
                text=o.outputs[0].text,
                input_tokens=len(o.prompt_token_ids or ()),
                output_tokens=len(o.outputs[0].token_ids or ()),
                finish_reason=getattr(o.outputs[0], "finish_reason", None),
            )
            for o in outputs
        ]


def continuing(batch: list[Messages]) -> dict:
    """``LLM.chat``'s options for a batch whose requests end with the opening of the reply (a
    final assistant message, continued rather than closed); none otherwise."""
    if batch and batch[0][-1].get("role") == "assistant":
        return {"continue_final_message": True, "add_generation_prompt": False}
    return {}
