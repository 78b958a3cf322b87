"""One LLM interface, four backends; every stage that calls an LLM has a role of its own.

A role is a config section that mounts one backend of ``conf/llm/``: ``extract.llm`` (the rule
extractor), ``judge.llm`` (the rule judge of :mod:`autorule.rewards.judge`); more roles come with
the stages that need them. Pick a backend per role on the
command line, e.g. ``llm@extract.llm=openai extract.llm.base_url=http://host:8000/v1``:

    bedrock   Amazon Bedrock Converse API (the paper's reasoner: DeepSeek-R1)
    openai    any OpenAI-compatible chat-completions server (vLLM, SGLang, OpenAI...)
    hf        a local transformers model (the tiny profile)
    vllm      vLLM's offline engine (optional extra)

``build(cfg, role)`` returns the configured backend (its messages name keys as ``<role>.<key>``);
``probe_roles`` checks that served roles answer before a run starts; ``record_usage`` writes
what a stage's roles cost into its manifest and ``llm_usage.json``. Every backend answers
``complete_all(list_of_message_lists)`` with :class:`Completion` objects and shares the cache,
retry, concurrency and record-keeping of :mod:`autorule.llm.base`; all but bedrock also read
one-token verdicts (``verdict_all``).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from autorule.llm.base import (
    LLM,
    Completion,
    LLMCallError,
    Messages,
    record_usage,
    usage_record,
)

__all__ = [
    "LLM",
    "Completion",
    "LLMCallError",
    "Messages",
    "build",
    "check_role",
    "probe_roles",
    "record_usage",
    "role_section",
    "usage_record",
]


def role_section(cfg: DictConfig, role: str) -> DictConfig:
    """The config section of LLM role ``role`` (a dotted key such as ``extract.llm``)."""
    section = OmegaConf.select(cfg, role)
    if not isinstance(section, DictConfig):
        raise KeyError(f"no LLM role {role!r} in the config: mount a backend with llm@{role}=...")
    return section


def check_role(cfg: DictConfig, role: str) -> None:
    """Refuses numbers in LLM role ``role``'s settings that cannot work, naming ``<role>.<key>``
    (:func:`autorule.llm.base.check_settings`), before any call is paid for."""
    from autorule.llm.base import check_settings

    check_settings(OmegaConf.to_container(role_section(cfg, role), resolve=True), role)


def build(cfg: DictConfig, role: str, overrides: dict | None = None) -> LLM:
    """The backend of LLM role ``role``, configured by that role's section.

    Answers are cached under the role's ``cache_dir``. ``model: tiny`` (a local backend on the
    tiny profile) resolves to the tiny model's folder. ``overrides`` replace keys of the section
    that the caller decides at run time (e.g. the ``device`` of a training process).
    """
    from hydra.utils import get_class

    from autorule.data.models import TINY, resolve

    settings = OmegaConf.to_container(role_section(cfg, role), resolve=True)
    settings.update(overrides or {})
    target = settings.pop("_target_", None)
    if not target:
        raise ValueError(
            f"{role} has no _target_; pick a backend: llm@{role}=bedrock|openai|hf|vllm"
        )
    if settings.get("model") == TINY:
        settings["model"] = resolve(cfg, "policy")
    llm = get_class(target)(**settings)
    llm.role = role  # messages name keys as the command line spells them: judge.llm.timeout
    return llm


def probe_roles(cfg: DictConfig, roles: list[str]) -> None:
    """One cheap reachability probe per served role of ``roles`` (local backends have nothing to
    reach), before any work; raises :class:`~autorule.llm.base.UnreachableError` naming the role
    and its URL."""
    from hydra.utils import get_class

    from autorule.llm.base import RemoteLLM

    for role in roles:
        target = role_section(cfg, role).get("_target_")
        if target and issubclass(get_class(str(target)), RemoteLLM):
            build(cfg, role).probe()
