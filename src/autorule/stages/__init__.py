"""The stage registry: one entry per stage, resolved by name.

Each stage is a module ``autorule.stages.<name>`` exposing ``run(cfg) -> Path``. Its
:class:`StageSpec` says which upstream artifacts it reads and which config subtrees decide its
output; :mod:`autorule.artifacts` hashes exactly those subtrees (plus the upstream hashes) to name
the artifact folder, so two experiments that agree on them share the artifact.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


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


SPECS: dict[str, StageSpec] = {
    "preprocess": StageSpec(
        keys=("dataset", "preprocess", "model.name_or_path", "model.tiny"),
        ignore=("preprocess.batch_size",),
    ),
    "extract": StageSpec(
        inputs=("preprocess",),
        # The whole llm group decides the answers (backend, model, sampling), except the keys
        # below, which only change how fast or how visibly the calls run. Keys a backend lacks
        # are skipped.
        keys=("extract", "llm"),
        ignore=("llm.max_concurrency", "llm.cache", "llm.cache_dir", "llm.progress", "llm.retry",
                "llm.read_timeout", "llm.connect_timeout", "llm.timeout", "llm.api_key_env",
                "llm.batch_size", "llm.device", "extract.max_failed_calls",
                "llm.gpu_memory_utilization", "llm.tensor_parallel_size"),
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
