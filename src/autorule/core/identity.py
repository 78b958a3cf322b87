"""Artifact identity: which folder holds a stage's output for a config, and what its content is.

Layout (all under ``paths.root``)::

    <root>/<stage>/<dataset>-<hash12>/          the artifact, present only once complete
    <root>/<stage>/<dataset>-<hash12>/manifest.json
    <root>/<stage>/<dataset>-<hash12>/config.yaml   full resolved config, secrets masked
    <root>/<stage>/.<dataset>-<hash12>.partial/  work in progress (never read by other stages)

``hash12`` is the start of the stage's *config hash*: a sha256 over the config subtrees listed in
the stage's :class:`~autorule.core.stage.StageSpec`, its format version and, recursively, the config
hashes of its upstream stages. Two experiments that agree on those values share the folder; any
difference gives a new folder, so artifacts of different configs never mix. The *content hash*
(``artifact_hash`` in the manifest) adds every file's hash, less the files that record how a run
was started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autorule.core.hashing import digest, file_sha256
from autorule.core.stage import StageSpec, _select, get_spec

MANIFEST = "manifest.json"
CONFIG_FILE = "config.yaml"  # the full resolved config, secrets masked


class StageInputError(RuntimeError):
    """An upstream artifact a stage needs is missing or incomplete."""


def config_value(cfg: DictConfig, key: str) -> Any:
    """The value at dotted ``key`` as plain data (None when absent)."""
    value = _select(cfg, key)
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _drop(tree: dict, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head in tree:
        if rest and isinstance(tree[head], dict):
            _drop(tree[head], rest)
        elif not rest:
            del tree[head]


def stage_config(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """The config values that decide ``stage``'s output, as a nested plain dict."""
    spec = get_spec(stage, cfg)
    tree: dict[str, Any] = {}
    for key in spec.hashed_keys(cfg):
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = config_value(cfg, key)
    for key in spec.ignored(cfg):
        _drop(tree, key)
    return tree


def rules_file_record(cfg: DictConfig, spec: StageSpec) -> dict[str, str] | None:
    """The rule file a rule-reading stage uses (``rules.path``) with its content hash, or None
    when it reads the extract artifact (an input like any other) or no rules at all."""
    path = spec.rules_file(cfg)
    if path is None:
        return None
    file = Path(path).expanduser()
    if not file.is_file():
        raise StageInputError(
            f"stage '{spec.name}' reads its rules from rules.path={path}, which is not a file. "
            "Point rules.path at a JSON or YAML rule file, or set rules.path=null to use the "
            "extract artifact's rules"
        )
    return {"path": str(file.resolve()), "sha256": file_sha256(file)}


def config_hash(cfg: DictConfig, stage: str) -> str:
    """Hash of everything that decides ``stage``'s output, upstream stages included."""
    return config_hash_with(cfg, stage, rules_file_record(cfg, get_spec(stage, cfg)))


def config_hash_with(cfg: DictConfig, stage: str, rules_file: dict[str, str] | None) -> str:
    """:func:`config_hash` with the stage's rule file already hashed (``rules_file``)."""
    spec = get_spec(stage, cfg)
    return digest(
        {
            "stage": stage,
            "version": spec.version,
            "config": stage_config(cfg, stage),
            "inputs": {
                name: config_hash(spec.config_for_input(cfg, name), spec.stage_of(name))
                for name in spec.inputs_for(cfg)
            },
            **({"fingerprint": spec.fingerprint(cfg)} if spec.fingerprint else {}),
            # The file's content, not its path: editing the rules moves the artifact.
            **({"rules_file": rules_file["sha256"]} if rules_file else {}),
        }
    )


def input_path(cfg: DictConfig, stage: str, name: str) -> Path:
    """Folder of input ``name`` of ``stage`` (under the config that input is found with)."""
    spec = get_spec(stage, cfg)
    return artifact_path(spec.config_for_input(cfg, name), spec.stage_of(name))


def artifact_path(cfg: DictConfig, stage: str) -> Path:
    """Folder of ``stage``'s artifact for this config (it may not exist yet)."""
    root = Path(cfg.paths.root).expanduser().resolve()
    return root / stage / f"{cfg.dataset.name}-{config_hash(cfg, stage)[:12]}"


def work_path(artifact: Path) -> Path:
    """The ``.partial`` work folder beside an artifact folder."""
    return artifact.with_name(f".{artifact.name}.partial")


LAUNCH_DIR = "launch"  # the worker configs of a launched (multi-process) training run
# What a serving stage (reward_server) logs after its artifact is committed: per-session score
# rows and LLM usage. Written into the complete artifact, so never part of its content.
SESSIONS_DIR = "sessions"
# Files that record how a run was started (force=true, the overrides, checkpoint and logging
# cadence, the tracker's run name) rather than what it made: two runs that produced the same
# content differ in them, so the content hash leaves them out. By file name, plus LAUNCH_DIR and
# SESSIONS_DIR.
# calls.jsonl (the extract stage's call log: latencies, retries, which answers were cached) is one
# too, so re-running extraction from the cache leaves the rule set's content hash unchanged.
# llm_usage.json (what each LLM role's calls cost: latencies, cache hits) is one too.
RUN_RECORDS = (CONFIG_FILE, "training_args.bin", "calls.jsonl", "llm_usage.json")


def is_run_record(relpath: str) -> bool:
    """Whether the artifact file at ``relpath`` records how the run was started."""
    return relpath.rsplit("/", 1)[-1] in RUN_RECORDS or relpath.startswith(
        (f"{LAUNCH_DIR}/", f"{SESSIONS_DIR}/")
    )


def content_hash(config_hash: str, files: dict[str, str]) -> str:
    """What downstream stages compare to see whether an upstream artifact changed: the config
    hash and every file's hash except the run records (:func:`is_run_record`)."""
    return digest(
        {
            "config_hash": config_hash,
            "files": {k: v for k, v in files.items() if not is_run_record(k)},
        }
    )


def hash_files(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (manifest excluded), keyed by relative path."""
    return {
        p.relative_to(folder).as_posix(): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
