"""The stage registry: one entry per stage, resolved by name.

Each stage is a module ``autorule.stages.<name>`` exposing ``run(cfg) -> Path``. Its
:class:`StageSpec` says which upstream artifacts it reads and which config subtrees decide its
output; :mod:`autorule.core.artifacts` hashes exactly those subtrees (plus the upstream hashes)
to name the artifact folder, so two experiments that agree on them share the artifact.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StageSpec:
    """What identifies one stage's output."""

    # Upstream stages whose artifacts this stage reads.
    inputs: tuple[str, ...] = ()
    # Dotted config keys whose values decide the output (hashed into the artifact's name).
    keys: tuple[str, ...] = ()
    # Dotted keys under ``keys`` that change only how the work runs, never its result.
    ignore: tuple[str, ...] = ()
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
    # revision), hashed into its config hash: see autorule.sources.
    sources: Callable[[Any], Any] | None = None

    def ignored(self, cfg: Any) -> tuple[str, ...]:
        """The keys under ``keys`` that do not decide the output under ``cfg``."""
        return self.ignore + (self.ignore_when(cfg) if self.ignore_when else ())

    def inputs_for(self, cfg: Any) -> tuple[str, ...]:
        """The upstream stages this stage reads under ``cfg``."""
        return tuple(n for n in self.inputs if n not in self.only_if or self.only_if[n](cfg))


# Training keys that change how the work runs (memory, speed, checkpoint and log cadence) but not
# the trained model; micro batch size is here because gradient accumulation keeps the global batch.
TRAINING_RUNTIME_KEYS = {
    stage: tuple(
        f"{stage}.{k}"
        for k in (
            "micro_batch_size",
            "eval_batch_size",
            "gradient_checkpointing",
            "deepspeed",
            "save_steps",
            "save_total_limit",
            "logging_steps",
            "eval_steps",
        )
    )
    for stage in ("sft", "rm")
}

# preprocess settings that only one dataset reads; the other dataset's artifact ignores them.
_MT_ONLY = (
    "dataset.split",
    "preprocess.mt_block_size",
    "preprocess.mt_train_per_block",
    "preprocess.mt_first_question_only",
)
_UF_ONLY = (
    "preprocess.filter",
    "preprocess.splits",
    "preprocess.test_subset_size",
    "preprocess.prompt_format",
    "preprocess.plain_template",
    "preprocess.unfiltered_splits",
    "model",  # the policy tokenizer is only used by the UltraFeedback length filter
)


def _preprocess_sources(cfg: Any) -> Any:
    from autorule.data.fingerprints import preprocess_sources

    return preprocess_sources(cfg)


SPECS: dict[str, StageSpec] = {
    # The dataset is identified by its content (local folder) or hub id and revision, through
    # `sources`; dataset.path itself is not hashed, so the same data read from two clones or two
    # spellings of a path shares one artifact.
    "preprocess": StageSpec(
        keys=("dataset", "preprocess", "model.name_or_path", "model.tiny"),
        ignore=(
            "preprocess.batch_size",
            "dataset.path",
            "dataset.hub_id",
            "dataset.local_copy",
            "dataset.revision",
        ),
        ignore_when=lambda cfg: _MT_ONLY if cfg.dataset.name == "uf" else _UF_ONLY,
        sources=_preprocess_sources,
        version=2,
    ),
    "sft": StageSpec(
        inputs=("preprocess",),
        keys=("sft", "model.name_or_path", "model.tiny"),
        ignore=TRAINING_RUNTIME_KEYS["sft"],
        resumable=True,
    ),
    # The reward model starts from the SFT model (rm.init=sft, the paper's setup) or from the base
    # model (rm.init=base); only the first reads, and is hashed with, the sft artifact. The pad
    # token decides where the score is read (transformers pools at the last non-pad token).
    "rm": StageSpec(
        inputs=("preprocess", "sft"),
        keys=("rm", "model.name_or_path", "model.tiny", "model.pad_token"),
        ignore=TRAINING_RUNTIME_KEYS["rm"],
        resumable=True,
        only_if={"sft": lambda cfg: cfg.rm.init == "sft"},
    ),
    "extract": StageSpec(
        inputs=("preprocess",),
        # The whole llm group decides the answers (backend, model, sampling), except the keys
        # below, which only change how fast or how visibly the calls run. Keys a backend lacks
        # are skipped.
        keys=("extract", "llm"),
        ignore=(
            "llm.max_concurrency",
            "llm.cache",
            "llm.cache_dir",
            "llm.progress",
            "llm.retry",
            "llm.read_timeout",
            "llm.connect_timeout",
            "llm.timeout",
            "llm.api_key_env",
            "llm.batch_size",
            "llm.device",
            "extract.max_failed_calls",
            "llm.gpu_memory_utilization",
            "llm.tensor_parallel_size",
        ),
        version=2,  # 2: parser prefers the last non-empty list, keeps cut-off lists' whole items
    ),
}

# Stages that orchestrate others and write no artifact of their own.
META_STAGES = ("pipeline",)


def load(name: str):
    """Imports and returns the module of stage ``name`` (imports are lazy: stages pull in torch)."""
    if name not in SPECS:
        known = ", ".join([*SPECS, *META_STAGES])
        raise KeyError(f"unknown stage {name!r}; known stages: {known}")
    return importlib.import_module(f"autorule.stages.{name}")
