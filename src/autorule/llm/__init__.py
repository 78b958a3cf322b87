"""One LLM interface, four backends, chosen by the ``llm`` config group's ``_target_``.

    llm=bedrock   Amazon Bedrock Converse API (default for the paper: DeepSeek-R1)
    llm=openai    any OpenAI-compatible chat-completions server
    llm=hf        a local transformers model (the tiny profile)
    llm=vllm      vLLM's offline engine (optional extra)

``build(cfg)`` returns the configured backend; every backend answers
``complete_all(list_of_message_lists)`` with :class:`Completion` objects and shares the cache,
retry, concurrency and record-keeping of :mod:`autorule.llm.base`.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from autorule.llm.base import LLM, Completion, LLMCallError, Messages

__all__ = ["LLM", "Completion", "LLMCallError", "Messages", "build"]


def build(cfg: DictConfig) -> LLM:
    """The backend named by ``cfg.llm._target_``, configured by the rest of ``cfg.llm``.

    Answers are cached under ``llm.cache_dir``. ``model: tiny`` (a local backend on the
    tiny profile) resolves to the tiny model's folder.
    """
    from hydra.utils import get_class

    from autorule.data.model_paths import TINY, resolve

    settings = OmegaConf.to_container(cfg.llm, resolve=True)
    target = settings.pop("_target_", None)
    if not target:
        raise ValueError("llm has no _target_; pick a backend: llm=bedrock|openai|hf|vllm")
    if settings.get("model") == TINY:
        settings["model"] = resolve(cfg, "policy")
    return get_class(target)(**settings)
