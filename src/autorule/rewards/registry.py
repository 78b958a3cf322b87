"""Reward terms by name: one registry maps a name to a factory (as open-r1's ``get_reward_funcs``).

A factory takes a :class:`RewardContext` (the config and what the caller loaded: the rm artifact,
the rules, the device, the policy tokenizer) and returns a *reward function* with TRL
GRPOTrainer's signature::

    f(prompts: list[str], completions: list[str], **kwargs) -> list[float]

named after its term (``f.__name__``), so TRL logs it as ``rewards/<name>/mean``. A term may also
expose ``f.metrics()`` (extra metrics averaged over the calls since the previous ``metrics()``,
e.g. ``rules/<i>``), ``f.close()`` (frees the models it holds) and ``f.show_examples(step)``
(prints the examples it keeps for a debug view; the grpo stage calls it at each logging step).
Under TRL the same metrics also go to TRL's ``log_metric`` hook, which GRPOTrainer hands every
reward function.

Add a term with ``@register("name", ...)`` on its factory in a module imported by
``autorule.rewards`` (docs/rewards.md). The registration also declares what the term reads
(:class:`TermReads`: the stage whose artifact it loads, its config sections, the rule judge, a
key naming a model folder instead), and the stages that use terms (grpo, generate's best-of-N)
derive from it their inputs, the config their hash covers and the model folders they
fingerprint: a term is its module, its config and this one entry.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from autorule.core.stage import known_stages


class RewardFunc(Protocol):
    """What a factory returns (``metrics`` and ``close`` are optional)."""

    __name__: str

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]: ...


@dataclass
class RewardContext:
    """What reward factories may need besides the config."""

    cfg: DictConfig  # the composed config (terms read rewards.<name> and judge)
    rm_folder: Path | None = None  # the rm artifact: model/, metrics.json (reward_mean, _std)
    rules: list[str] = field(default_factory=list)  # the rule set the rules term checks
    rules_source: str = "the rule set"  # where the rules were read (named in errors about them)
    device: str | None = None  # where models run; None = cuda when available, else cpu
    tokenizer: Any = None  # the policy tokenizer (response lengths in policy tokens)
    max_completion_length: int | None = None  # the policy's token budget per answer (cut-offs)
    # The artifacts the calling stage read, by stage (a term's TermReads.stage among them).
    inputs: dict[str, Path] = field(default_factory=dict)

    def resolved_device(self) -> str:
        from autorule.data.models import resolve_device

        return resolve_device(self.device)


@dataclass(frozen=True)
class TermReads:
    """What one reward term reads besides its own settings ``rewards.<term>``."""

    # The stage whose artifact the term loads (rm, cloud, feedback_rm); None: no artifact.
    stage: str | None = None
    # Further config sections it reads (e.g. ``judge``): hashed only while the term is in use.
    sections: tuple[str, ...] = ()
    # It checks responses against the rule set with the rule judge.
    rules: bool = False
    # A dotted key naming a model folder used instead of the stage's artifact (e.g.
    # ``rewards.cloud.model``): the folder is hashed by content, not by its path.
    model_key: str | None = None


Factory = Callable[[RewardContext], RewardFunc]
REWARDS: dict[str, Factory] = {}
READS: dict[str, TermReads] = {}


def register(
    name: str,
    *,
    stage: str | None = None,
    sections: Sequence[str] = (),
    rules: bool = False,
    model_key: str | None = None,
) -> Callable:
    """Registers a reward factory under ``name`` (a decorator), with what it reads
    (:class:`TermReads`); a stage that does not exist is refused here, at import."""
    if stage is not None and stage not in known_stages():
        raise ValueError(
            f"reward term {name!r} reads the artifact of stage {stage!r}, which is no stage; "
            f"stages: {known_stages()}"
        )
    reads = TermReads(stage, tuple(sections), rules, model_key)

    def add(factory: Factory) -> Factory:
        if name in REWARDS and REWARDS[name] is not factory:
            raise ValueError(f"reward term {name!r} is registered twice")
        REWARDS[name] = factory
        READS[name] = reads
        return factory

    return add


# --------------------------------------------------------------------------------------------
# What a stage that uses terms reads: derived from the terms it uses under a config
# (``terms(cfg)``), so no stage keeps a table of terms.


def reads_of(names: Sequence[str]) -> dict[str, TermReads]:
    """The declarations of the known terms among ``names`` (unknown ones are the stage's check's
    to refuse)."""
    return {n: READS[n] for n in names if n in READS}


def model_folder_of(cfg: Any, reads: TermReads) -> str | None:
    """The model folder a term is pointed at (its ``model_key``), or None."""
    if reads.model_key is None:
        return None
    value = OmegaConf.select(cfg, reads.model_key, default=None)
    return str(value) if value else None


def grpo_terms(cfg: Any) -> list[str]:
    """The terms ``grpo.rewards`` names: what GRPO (TRL) and the reward server (OpenRLHF) score."""
    return [str(name) for name in cfg.grpo.rewards]


def artifact_inputs(cfg: Any, names: Sequence[str]) -> tuple[str, ...]:
    """The stages whose artifacts the terms ``names`` load under ``cfg`` (a term pointed at a
    model folder loads none)."""
    stages = [
        reads.stage
        for reads in reads_of(names).values()
        if reads.stage is not None and model_folder_of(cfg, reads) is None
    ]
    return tuple(dict.fromkeys(stages))


def uses_rules(names: Sequence[str]) -> bool:
    """Whether one of the terms ``names`` checks the rule set."""
    return any(reads.rules for reads in reads_of(names).values())


def hashed_sections(names: Sequence[str]) -> tuple[str, ...]:
    """The config the terms ``names`` read: ``rewards.<term>`` and their further sections."""
    keys = [f"rewards.{name}" for name in names]
    keys += [s for reads in reads_of(names).values() for s in reads.sections]
    return tuple(dict.fromkeys(keys))


def unhashed_keys(cfg: Any, names: Sequence[str]) -> tuple[str, ...]:
    """The model-folder keys that are set: their folders are hashed by content
    (:func:`model_fingerprints`), so moving a folder keeps the artifact."""
    return tuple(
        reads.model_key
        for reads in reads_of(names).values()
        if model_folder_of(cfg, reads) is not None
    )


def model_fingerprints(cfg: Any, names: Sequence[str]) -> dict[str, Any]:
    """The content of each model folder a term is pointed at, by its key."""
    from autorule.data.fingerprints import folder_identity

    found: dict[str, Any] = {}
    for name, reads in reads_of(names).items():
        folder = model_folder_of(cfg, reads)
        if folder is None:
            continue
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"{reads.model_key}={folder} is not a folder (the reward term {name} reads a "
                "saved model there)"
            )
        found[str(reads.model_key)] = folder_identity(path.resolve())
    return found


def term_model(context: RewardContext, name: str) -> Path:
    """The model folder of term ``name``: the folder its ``model_key`` names, else ``model/`` of
    the artifact of its stage (the stage's input, or, called outside a stage, the complete
    artifact under this config)."""
    from autorule.core.artifacts import artifact_path, is_complete, make_command, read_manifest

    reads = READS[name]
    chosen = model_folder_of(context.cfg, reads)
    if chosen is not None:
        folder = Path(chosen).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{reads.model_key}={chosen}: no saved model there")
        return folder
    stage = str(reads.stage)
    artifact = context.inputs.get(stage)
    if artifact is None:
        artifact = artifact_path(context.cfg, stage)
        if not is_complete(read_manifest(artifact)):
            raise FileNotFoundError(
                f"the reward term {name} reads the {stage} artifact {artifact}, which is "
                f"missing or incomplete; make it with:\n  {make_command(context.cfg, stage)}"
                + (f"\nor point {reads.model_key} at a saved model" if reads.model_key else "")
            )
    return Path(artifact) / "model"


def build_reward_funcs(names: Sequence[str], context: RewardContext) -> list[RewardFunc]:
    """The reward functions of the terms ``names``, in order."""
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ValueError(f"unknown reward term(s) {unknown}; known: {sorted(REWARDS)}")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ValueError(f"reward term(s) {repeated} listed twice (TRL logs them by name)")
    funcs = []
    for name in names:
        func = REWARDS[name](context)
        if getattr(func, "__name__", None) != name:
            raise ValueError(f"reward factory {name!r} returned a function named {func.__name__!r}")
        funcs.append(func)
    return funcs


def close_all(funcs: Sequence[RewardFunc]) -> None:
    """Calls ``close()`` on every function that has one."""
    for func in funcs:
        close = getattr(func, "close", None)
        if close is not None:
            close()


def concurrent(func: RewardFunc) -> Callable:
    """``func`` as an async reward function that runs in a worker thread.

    TRL's GRPOTrainer calls the synchronous reward functions one after the other, then gathers
    the async ones on its event loop. Made async, the terms of a step overlap: the rm scores on
    its model (torch releases the GIL) while the judge's calls wait on the server. The
    attributes the stage reads (``metrics``, ``close``, ``judge``...) carry over.
    """
    import asyncio

    # CUDA's current device is per thread and a new thread starts on device 0: the worker takes
    # the one this process trains on (its local rank under accelerate), where the terms' models
    # were placed.
    device = _cuda_device()

    def call(*args: Any, **kwargs: Any) -> list[float]:
        if device is not None:
            import torch

            torch.cuda.set_device(device)
        return func(*args, **kwargs)

    async def run(*args: Any, **kwargs: Any) -> list[float]:
        return await asyncio.to_thread(call, *args, **kwargs)

    run.__dict__.update(func.__dict__)
    return named(run, func.__name__)


def _cuda_device() -> int | None:
    """This thread's CUDA device, or None without CUDA (torch not loaded counts as none)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.current_device()


def named(func: Callable, name: str) -> Callable:
    """``func`` renamed ``name`` (TRL names a reward after ``__name__``)."""
    func.__name__ = func.__qualname__ = name
    return func


class MetricLog:
    """Per-call metrics, averaged over calls (weighted by responses) until :meth:`pop`."""

    def __init__(self):
        self._sums: dict[str, float] = defaultdict(float)
        self._weights: dict[str, float] = defaultdict(float)

    def add(self, metrics: dict[str, float], weight: float, log_metric: Callable | None) -> None:
        """Adds one call's metrics; also hands them to TRL's ``log_metric`` when it is given."""
        for key, value in metrics.items():
            self._sums[key] += float(value) * weight
            self._weights[key] += weight
            if log_metric is not None:
                log_metric(key, float(value))

    def pop(self) -> dict[str, float]:
        """The averages since the last pop, then starts afresh."""
        out = {k: self._sums[k] / self._weights[k] for k in self._sums if self._weights[k]}
        self._sums.clear()
        self._weights.clear()
        return out
