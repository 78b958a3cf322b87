"""What a stage says about itself, and how a stage is found by name.

Each stage is a module (``autorule.stages.<name>``, or the module that ``stage_modules.<name>``
names in config) that exposes ``run(cfg) -> Path`` and a :class:`StageSpec` named ``SPEC``. The spec
is all the rest of the package knows about a stage: what it reads (upstream artifacts, rules),
which config decides its output (hashed into its artifact's folder name), which LLM roles it
uses, and whether it trains. No other module lists stages by name; the default pipeline order is
``pipeline.stages`` in config.

Imports nothing from autorule at import time: the stage module is imported when its spec is
first asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

# Stage names that orchestrate others and write no artifact of their own.
META_STAGES = ("pipeline",)
# The upstream stage whose artifact holds the extracted rules.
RULES_STAGE = "extract"

# Keys of an LLM role's section that change how calls travel (where, how fast, how visibly),
# never what the model answers: left out of the artifact hash and of the response cache's key.
# Everything else in the section (backend, model, sampling, token budget, seed) is output.
LLM_TRANSPORT_KEYS = (
    "base_url",
    "endpoint_url",
    "region",
    "api_key_env",
    "timeout",
    "read_timeout",
    "connect_timeout",
    "max_concurrency",
    "retry",
    "cache",
    "cache_dir",
    "progress",
    "batch_size",
    "verdict_batch_size",
    "device",
    "gpu_memory_utilization",
    "tensor_parallel_size",
)


@dataclass(frozen=True)
class StageSpec:
    """What identifies one stage's output, and what the stage needs to run."""

    name: str
    # Upstream stages whose artifacts this stage reads.
    inputs: tuple[str, ...] = ()
    # Further inputs decided by config: config -> stage names (e.g. the artifacts of the reward
    # terms in use, which autorule.rewards.registry derives from the terms' declarations).
    inputs_when: Callable[[Any], tuple[str, ...]] | None = None
    # Dotted config keys whose values decide the output (hashed into the artifact's name).
    keys: tuple[str, ...] = ()
    # Further keys hashed under some configs: config -> dotted keys (e.g. the settings of the
    # reward terms in use, and of nothing else).
    keys_when: Callable[[Any], tuple[str, ...]] | None = None
    # Dotted keys under ``keys`` that change only how the work runs, never its result.
    ignore: tuple[str, ...] = ()
    # Dotted config sections (under ``keys``) that hold an LLM role, e.g. ``extract.llm``: their
    # transport keys (LLM_TRANSPORT_KEYS) are ignored, so moving a server keeps the artifact.
    llm_roles: tuple[str, ...] = ()
    # The stage reads a rule set (always, or under the configs a predicate accepts): the extract
    # artifact, or the file ``rules.path`` names. Either is an input: recorded in the manifest and
    # hashed (a changed rule file moves the artifact).
    uses_rules: bool | Callable[[Any], bool] = False
    # The stage trains through the launcher (training.launch): it has a dry run of its own and
    # may run as ``accelerate launch`` workers, which call its module's ``train`` function.
    trains: bool = False
    # A training stage's own trainer arguments (config section -> dict), added to the shared ones
    # of autorule.training.arguments; shown by the dry run.
    trainer_args: Callable[[Any], dict[str, Any]] | None = None
    # Bump when the stage's output format or semantics change, so old artifacts go out of date.
    version: int = 1
    # Training stages keep their partial folder between runs so they can resume from checkpoints.
    resumable: bool = False
    # Inputs read only under some configs: input name -> predicate on the composed config. An
    # input whose predicate is false is neither required nor hashed, so its config cannot change
    # this stage's artifact.
    only_if: Mapping[str, Callable[[Any], bool]] = field(default_factory=dict)
    # Further keys to ignore under some configs (e.g. the MT-Bench split's settings when the
    # dataset is UltraFeedback): config -> dotted keys.
    ignore_when: Callable[[Any], tuple[str, ...]] | None = None
    # Fingerprint of what the stage reads from outside paths.root (a dataset folder, a hub id and
    # revision), hashed into its config hash: see autorule.data.fingerprints.
    fingerprint: Callable[[Any], Any] | None = None
    # Inputs found under another dataset's config: input name -> the dotted config key that
    # names a conf/dataset option for it (null: this run's own dataset), e.g. grpo's rubric data.
    input_datasets: Mapping[str, str] = field(default_factory=dict)
    # Inputs made under a config of their own: input name -> a function of this stage's config
    # giving that input's config (e.g. the feedback stage's unranked samples to annotate). When
    # such an input is missing, the pipeline makes it, and what it lacks in turn
    # (autorule.pipeline); the other inputs are the user's to make first.
    input_configs: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    # Inputs named other than their stage: input name -> stage (one stage read under two
    # configs, e.g. feedback_eval's ``generate_ratings`` and ``generate_rankings``).
    input_stages: Mapping[str, str] = field(default_factory=dict)

    def stage_of(self, name: str) -> str:
        """The stage whose artifact input ``name`` is."""
        return self.input_stages.get(name, name)

    def hashed_keys(self, cfg: Any) -> tuple[str, ...]:
        """The dotted keys whose values decide the output under ``cfg``."""
        return self.keys + (self.keys_when(cfg) if self.keys_when else ())

    def ignored(self, cfg: Any) -> tuple[str, ...]:
        """The keys under ``keys`` that do not decide the output under ``cfg``."""
        transport = tuple(f"{role}.{k}" for role in self.llm_roles for k in LLM_TRANSPORT_KEYS)
        return self.ignore + transport + (self.ignore_when(cfg) if self.ignore_when else ())

    def reads_rules(self, cfg: Any) -> bool:
        """Whether the stage reads a rule set under ``cfg``."""
        return bool(self.uses_rules(cfg) if callable(self.uses_rules) else self.uses_rules)

    def rules_file(self, cfg: Any) -> str | None:
        """The rule file read under ``cfg`` (None: the extract artifact's rules, or none)."""
        if not self.reads_rules(cfg):
            return None
        rules = cfg.get("rules") if hasattr(cfg, "get") else None
        path = rules.get("path") if rules is not None else None
        return str(path) if path else None

    def config_for_input(self, cfg: Any, name: str) -> Any:
        """The config under which input ``name`` is found: ``cfg`` itself, except for the rule
        set when ``rules.dataset`` names another dataset (AutoRule-MT: rules extracted from
        MT-Bench judgments, used to train on UltraFeedback prompts), for the inputs of
        ``input_datasets`` that name one, and for those of ``input_configs``."""
        from autorule.core.config import with_dataset

        if name in self.input_configs:
            return self.input_configs[name](cfg)
        if name in self.input_datasets:
            key = self.input_datasets[name]
            dataset = _select(cfg, key)
            if dataset and dataset != cfg.dataset.name:
                return with_dataset(cfg, str(dataset), key=key)
            return cfg
        if name != RULES_STAGE or not self.reads_rules(cfg):
            return cfg
        dataset = (cfg.get("rules") or {}).get("dataset")
        if not dataset or dataset == cfg.dataset.name:
            return cfg
        return with_dataset(cfg, str(dataset))

    def inputs_for(self, cfg: Any) -> tuple[str, ...]:
        """The upstream stages this stage reads under ``cfg``."""
        declared = self.inputs + (self.inputs_when(cfg) if self.inputs_when else ())
        names = [n for n in declared if n not in self.only_if or self.only_if[n](cfg)]
        names = list(dict.fromkeys(names))
        if self.reads_rules(cfg) and self.rules_file(cfg) is None and RULES_STAGE not in names:
            names.append(RULES_STAGE)
        return tuple(names)


def _select(cfg: Any, dotted: str) -> Any:
    """The value at a dotted key of a mapping-like config (None when absent)."""
    node = cfg
    for part in dotted.split("."):
        node = node.get(part) if hasattr(node, "get") else None
        if node is None:
            return None
    return node


# Specs registered by hand (tests, notebooks), consulted before any module is imported.
_REGISTERED: dict[str, StageSpec] = {}


def register(spec: StageSpec) -> None:
    """Makes ``spec`` known without a module (its stage cannot be run by name, only hashed)."""
    _REGISTERED[spec.name] = spec


def module_name(name: str, cfg: Any = None) -> str:
    """The module of stage ``name``: ``stage_modules.<name>`` in config, else autorule.stages."""
    custom = None
    if cfg is not None and hasattr(cfg, "get"):
        modules = cfg.get("stage_modules") or {}
        custom = modules.get(name)
    return str(custom) if custom else f"autorule.stages.{name}"


def load(name: str, cfg: Any = None) -> ModuleType:
    """Imports and returns the module of stage ``name`` (it must define ``SPEC`` and ``run``)."""
    if name in META_STAGES:
        raise KeyError(f"{name!r} runs other stages and has no module of its own")
    target = module_name(name, cfg)
    try:
        module = importlib.import_module(target)
    except ModuleNotFoundError as err:
        if err.name is not None and target.startswith(err.name):
            raise KeyError(
                f"unknown stage {name!r}: no module {target}. A stage is a module in "
                "autorule/stages/ (or one named by stage_modules.<name>) with SPEC and run(cfg); "
                "see 'Adding a stage' in docs/architecture.md"
            ) from err
        raise
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, StageSpec) or not callable(getattr(module, "run", None)):
        raise TypeError(f"stage module {target} must define SPEC (a StageSpec) and run(cfg)")
    if spec.name != name:
        raise ValueError(f"stage module {target} declares SPEC.name={spec.name!r}, not {name!r}")
    return module


def builtin_stages() -> list[str]:
    """The names of the stage modules in ``autorule.stages`` (found on disk, not listed)."""
    import pkgutil

    package = importlib.import_module("autorule.stages")
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.ispkg)


def known_stages() -> list[str]:
    """Every stage name known without config: the modules of autorule.stages and the specs
    registered by hand."""
    return sorted(set(builtin_stages()) | set(_REGISTERED))


def get_spec(name: str, cfg: Any = None) -> StageSpec:
    """The spec of stage ``name`` (registered by hand, or its module's ``SPEC``)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    return load(name, cfg).SPEC
