"""The stage/artifact contract: folders, manifests, hashes and atomic commits.

Layout (all under ``paths.root``)::

    <root>/<stage>/<dataset>-<hash12>/          the artifact, present only once complete
    <root>/<stage>/<dataset>-<hash12>/manifest.json
    <root>/<stage>/<dataset>-<hash12>/config.yaml   full resolved config, secrets masked
    <root>/<stage>/.<dataset>-<hash12>.partial/  work in progress (never read by other stages)

``hash12`` is the start of the stage's *config hash*: a sha256 over the config subtrees listed in
the stage's :class:`~autorule.core.stage.StageSpec`, its format version and, recursively, the config
hashes of its upstream stages. Two experiments that agree on those values share the folder; any
difference gives a new folder, so artifacts of different configs never mix.

A stage writes into the ``.partial`` folder and commits by renaming it into place after writing a
manifest with ``status: complete``; a crash at any point leaves no folder that looks complete.

An artifact is *up to date* when its manifest is complete, its config hash matches, every file the
manifest lists is there with its recorded size (with ``verify=true``, its recorded sha256 too),
it is not marked ``provisional``, and every upstream artifact it read still has the content hash
recorded in ``inputs`` (so recomputing an upstream stage into different content makes its
downstream stages out of date). A manifest that cannot be read, whatever it holds, counts as no
manifest: the stage recomputes the artifact.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shutil
import subprocess
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autorule.core.config import overrides_without
from autorule.core.files import write_json_atomic
from autorule.core.hashing import digest, file_sha256
from autorule.core.secrets import redact
from autorule.core.stage import RULES_STAGE, StageSpec, get_spec

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CONFIG_FILE = "config.yaml"  # the full resolved config, secrets masked
PACKAGES = (
    "autorule",
    "torch",
    "transformers",
    "trl",
    "datasets",
    "accelerate",
    "deepspeed",
    "tokenizers",
    "hydra-core",
    "boto3",
    "openai",
    "vllm",
)


class StageInputError(RuntimeError):
    """An upstream artifact a stage needs is missing or incomplete."""


# --------------------------------------------------------------------------------------------
# Hashing


def _select(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
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
    for key in spec.keys:
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _select(cfg, key)
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
    return _config_hash(cfg, stage, rules_file_record(cfg, get_spec(stage, cfg)))


def _config_hash(cfg: DictConfig, stage: str, rules_file: dict[str, str] | None) -> str:
    """:func:`config_hash` with the stage's rule file already hashed (``rules_file``)."""
    spec = get_spec(stage, cfg)
    return digest(
        {
            "stage": stage,
            "version": spec.version,
            "config": stage_config(cfg, stage),
            "inputs": {
                name: config_hash(spec.config_for_input(cfg, name), name)
                for name in spec.inputs_for(cfg)
            },
            **({"fingerprint": spec.fingerprint(cfg)} if spec.fingerprint else {}),
            # The file's content, not its path: editing the rules moves the artifact.
            **({"rules_file": rules_file["sha256"]} if rules_file else {}),
        }
    )


def input_path(cfg: DictConfig, stage: str, name: str) -> Path:
    """Folder of input ``name`` of ``stage`` (under the config that input is found with)."""
    return artifact_path(get_spec(stage, cfg).config_for_input(cfg, name), name)


def artifact_path(cfg: DictConfig, stage: str) -> Path:
    """Folder of ``stage``'s artifact for this config (it may not exist yet)."""
    root = Path(cfg.paths.root).expanduser().resolve()
    return root / stage / f"{cfg.dataset.name}-{config_hash(cfg, stage)[:12]}"


def work_path(artifact: Path) -> Path:
    """The ``.partial`` work folder beside an artifact folder."""
    return artifact.with_name(f".{artifact.name}.partial")


LAUNCH_DIR = "launch"  # the worker configs of a launched (multi-process) training run
# Files that record how a run was started (force=true, the overrides, checkpoint and logging
# cadence, the tracker's run name) rather than what it made: two runs that produced the same
# content differ in them, so the content hash leaves them out. By file name, plus LAUNCH_DIR.
# calls.jsonl (the extract stage's call log: latencies, retries, which answers were cached) is one
# too, so re-running extraction from the cache leaves the rule set's content hash unchanged, and
# so is llm_usage.json (what each LLM role's calls cost: latencies, cache hits).
RUN_RECORDS = (CONFIG_FILE, "training_args.bin", "calls.jsonl", "llm_usage.json")


def is_run_record(relpath: str) -> bool:
    """Whether the artifact file at ``relpath`` records how the run was started."""
    return relpath.rsplit("/", 1)[-1] in RUN_RECORDS or relpath.startswith(f"{LAUNCH_DIR}/")


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


# --------------------------------------------------------------------------------------------
# Manifests


def read_manifest(folder: Path) -> dict | None:
    """The manifest in ``folder``, or None when there is none or it cannot be read.

    Unreadable means anything but what :meth:`StageJob.commit` writes: not UTF-8 JSON, not a
    mapping, or a complete manifest without the fields the contract relies on (``[1, 2]``, random
    bytes, ``{"status": "complete"}``). Such a folder is treated as holding no artifact, so the
    stage recomputes it (``force=true`` or not) instead of failing on the manifest.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_bytes())
    except (OSError, ValueError, RecursionError):  # ValueError: not UTF-8, not JSON
        return None
    return manifest if _well_formed(manifest) else None


def _is_str_map(obj: Any, value_type: type | tuple[type, ...] = str) -> bool:
    return isinstance(obj, dict) and all(
        isinstance(k, str) and isinstance(v, value_type) and not isinstance(v, bool)
        for k, v in obj.items()
    )


def _well_formed(manifest: Any) -> bool:
    """Whether ``manifest`` has the shape :meth:`StageJob._manifest` gives it."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("status"), str):
        return False
    if manifest["status"] != "complete":
        return True  # a work folder's "running" manifest: only its status is ever read
    inputs = manifest.get("inputs", {})
    return (
        isinstance(manifest.get("config_hash"), str)
        and isinstance(manifest.get("artifact_hash"), str)
        and _is_str_map(manifest.get("files"))
        and _is_str_map(manifest.get("sizes", {}), int)
        and _is_str_map(manifest.get("counts", {}), int)
        and isinstance(inputs, dict)
        and all(_is_str_map(v) and {"path", "hash"} <= v.keys() for v in inputs.values())
    )


def check_files(folder: Path, manifest: dict, verify: bool = False) -> str | None:
    """None when every file ``manifest`` lists is in ``folder`` with its recorded size (and,
    with ``verify``, its recorded sha256); otherwise which file is wrong and how.

    Sizes cost one ``stat`` per file and catch truncated or half-copied files; hashes read every
    byte (figures in docs/benchmarks.md) and catch same-size corruption too. Manifests written
    before sizes were recorded are checked for the files' presence (and hashes with ``verify``).
    """
    sizes = manifest.get("sizes", {})
    for relpath, sha in manifest["files"].items():
        path = folder / relpath
        try:
            size = path.stat().st_size
        except OSError:
            return f"file {relpath} is missing"
        if relpath in sizes and size != sizes[relpath]:
            return (
                f"file {relpath} is corrupted: it has {size} bytes where the manifest "
                f"recorded {sizes[relpath]}"
            )
        if verify and file_sha256(path) != sha:
            return f"file {relpath} is corrupted: its sha256 differs from the manifest's"
    return None


def verify_hashes(cfg: DictConfig) -> bool:
    """Whether ``verify=true`` asks for content hashes to be checked on reuse."""
    return bool(OmegaConf.select(cfg, "verify", default=False))


def is_complete(manifest: dict | None) -> bool:
    """Whether a manifest (from :func:`read_manifest`) marks its artifact complete."""
    return manifest is not None and manifest.get("status") == "complete"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_sha() -> str | None:
    """The commit of the autorule checkout in use (with ``-dirty`` when modified), if any."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def make_command(cfg: DictConfig, stage: str, drop: tuple[str, ...] = ("stage", "force")) -> str:
    """The command line that (re)makes ``stage`` with the overrides of the current run, less
    those whose top-level key is in ``drop``."""
    overrides = overrides_without(OmegaConf.select(cfg, "run.overrides") or [], drop)
    return " ".join(["python -m autorule", f"stage={stage}", *overrides])


def is_up_to_date(cfg: DictConfig, stage: str, folder: Path | None = None) -> tuple[bool, str]:
    """Whether ``stage``'s artifact is complete and current; the second value says why not."""
    folder = folder or artifact_path(cfg, stage)
    manifest = read_manifest(folder)
    if manifest is None:
        return False, "no artifact yet"
    if manifest.get("status") != "complete":
        return False, f"artifact status is {manifest.get('status')!r}"
    if manifest.get("config_hash") != config_hash(cfg, stage):
        return False, "config changed"
    if manifest.get("provisional"):
        # e.g. fallback rules committed because the LLM gave none: a later run with a working
        # endpoint must not find nothing to do.
        return False, "the artifact is provisional (a stand-in for results the run could not get)"
    problem = check_files(folder, manifest, verify_hashes(cfg))
    if problem:
        return False, problem
    for name, recorded in manifest.get("inputs", {}).items():
        current = read_manifest(Path(recorded["path"]))
        if current is not None and current.get("artifact_hash") != recorded["hash"]:
            return False, f"upstream '{name}' was recomputed"
    return True, "complete and up to date"


# --------------------------------------------------------------------------------------------
# Running one stage


# Locks this process holds, by lock file. A stage that failed keeps its lock until the process
# exits (the OS drops it then, also after a crash); a later run of the same stage in the same
# process (a retry, a test) takes it over rather than waiting for itself.
_HELD_LOCKS: dict[str, int] = {}


def lock_path(artifact: Path) -> Path:
    """The lock file beside an artifact folder (empty; left in place)."""
    return artifact.with_name(f".{artifact.name}.lock")


def acquire_lock(artifact: Path) -> None:
    """Waits until no other process runs the stage that writes ``artifact``.

    Two jobs of a sweep that need the same upstream artifact (the same preprocess or SFT output)
    would otherwise both compute it and delete each other's work folder; with the lock the second
    waits, then finds the artifact complete and does nothing. Uses ``flock``, which the OS
    releases when a process dies; on a file system without it the run goes on unlocked.
    """
    import fcntl

    key = str(lock_path(artifact))
    if key in _HELD_LOCKS:
        return
    lock_path(artifact).parent.mkdir(parents=True, exist_ok=True)
    fd = None
    try:
        # Read-only and world-writable at creation (less the umask): flock needs no write
        # access, so colleagues sharing a paths.root can lock a file one of them created.
        fd = os.open(key, os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another process that is writing %s (lock %s)", artifact, key)
            fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as err:
        if fd is not None:
            os.close(fd)
        log.warning("cannot lock %s (%s): concurrent runs of this stage may collide", key, err)
        return
    _HELD_LOCKS[key] = fd


def release_lock(artifact: Path) -> None:
    fd = _HELD_LOCKS.pop(str(lock_path(artifact)), None)
    if fd is not None:
        os.close(fd)


class StageJob:
    """One run of one stage: finds its inputs, gives it a work folder, commits the artifact.

    Typical use inside ``stages/<name>.py`` (the ``with`` block releases the job's lock if the
    stage fails)::

        with StageJob(cfg, "sft") as job:
            if job.done:
                return job.path
            data = job.input("preprocess") / "train_sft.parquet"
            ...  # write files into job.workdir
            return job.commit(counts={"rows": n})
    """

    def __init__(self, cfg: DictConfig, stage: str):
        self.cfg, self.stage = cfg, stage
        self.spec: StageSpec = get_spec(stage, cfg)
        # The rule file is hashed once, here: the config hash and the manifest both record this
        # hash, even when the file is edited while the stage runs.
        self._rules_file = rules_file_record(cfg, self.spec)
        self.config_hash = _config_hash(cfg, stage, self._rules_file)
        self.path = artifact_path(cfg, stage)
        self.workdir = work_path(self.path)
        self._inputs: dict[str, dict[str, str]] = {}
        force = bool(OmegaConf.select(cfg, "force", default=False))
        fresh, reason = is_up_to_date(cfg, stage, self.path)
        if not fresh or force:
            for name in self.spec.inputs_for(cfg):
                self.input(name)  # fail fast, before writing anything, when an input is missing
            acquire_lock(self.path)  # held until commit: one writer per artifact at a time
            # Another process may have completed the artifact while this one waited.
            fresh, reason = is_up_to_date(cfg, stage, self.path)
        self.done = fresh and not force
        if self.done:
            release_lock(self.path)
            log.info(
                "[%s] %s: %s — nothing to do (force=true recomputes)", stage, reason, self.path
            )
            return
        log.info("[%s] running (%s) -> %s", stage, "forced" if fresh else reason, self.path)
        if self.workdir.exists() and (force or not self.spec.resumable):
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.workdir / MANIFEST, self._manifest("running", {}, {}))

    def __enter__(self) -> StageJob:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        # A failed run gives up its lock at once, so other processes waiting for this artifact
        # go on (and find it incomplete) even while this process lives on (a notebook, a test).
        if exc_type is not None:
            release_lock(self.path)
        return False

    def input(self, name: str) -> Path:
        """Folder of the complete upstream artifact ``name``; raises with the command to make it."""
        if name not in self.spec.inputs_for(self.cfg):
            raise KeyError(f"stage {self.stage!r} does not declare input {name!r}")
        return self.input_as(name, name, self.spec.config_for_input(self.cfg, name))

    def input_as(self, name: str, stage: str, input_cfg: DictConfig) -> Path:
        """Folder of the complete artifact of ``stage`` under ``input_cfg`` (e.g. one value of a
        swept key), recorded in the manifest's inputs as ``name`` like any declared input, so its
        recomputation makes this artifact out of date. The stage hashes ``input_cfg`` itself (its
        spec's ``fingerprint``)."""
        folder = artifact_path(input_cfg, stage)
        manifest = read_manifest(folder)
        if not is_complete(manifest):
            if manifest is not None:
                state = f"incomplete ({manifest.get('status')})"
            elif work_path(folder).exists():
                state = (
                    f"missing (an interrupted or still running job left {work_path(folder).name};"
                    " re-running resumes or restarts it)"
                )
            elif (folder / MANIFEST).exists():
                state = "missing (its manifest.json cannot be read)"
            else:
                state = "missing"
            raise StageInputError(
                f"stage '{self.stage}' needs the '{name}' artifact at {folder}, which is {state}. "
                f"Make it first with:\n  {make_command(input_cfg, stage)}"
            )
        problem = check_files(folder, manifest, verify_hashes(self.cfg))
        if problem:
            raise StageInputError(
                f"stage '{self.stage}' needs the '{name}' artifact at {folder}, but its {problem}. "
                f"Recompute it with:\n  {make_command(input_cfg, stage)}"
            )
        self._inputs[name] = {"path": str(folder), "hash": manifest["artifact_hash"]}
        return folder

    def rules_origin(self) -> dict[str, str]:
        """Where this stage's rules come from: the rule file with its content hash, or the
        extract artifact it reads (path and content hash, as for any input)."""
        if self._rules_file is not None:
            return {"from": "file", **self._rules_file}
        folder = artifact_path(self.spec.config_for_input(self.cfg, RULES_STAGE), RULES_STAGE)
        manifest = read_manifest(folder) or {}
        return {"from": RULES_STAGE, "path": str(folder), "hash": manifest.get("artifact_hash")}

    def _manifest(
        self, status: str, counts: dict[str, int], files: dict[str, str], extra: dict | None = None
    ) -> dict:
        return redact(
            {
                "stage": self.stage,
                "status": status,
                "config_hash": self.config_hash,
                "artifact_hash": content_hash(self.config_hash, files),
                "inputs": self._inputs,
                "counts": counts,
                "files": files,
                "config": stage_config(self.cfg, self.stage),
                **(
                    {"fingerprint": self.spec.fingerprint(self.cfg)}
                    if self.spec.fingerprint
                    else {}
                ),
                **({"rules": self.rules_origin()} if self.spec.reads_rules(self.cfg) else {}),
                "command": make_command(self.cfg, self.stage),
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "git_sha": git_sha(),
                "versions": package_versions(),
                **(extra or {}),
            }
        )

    def commit(self, counts: dict[str, int] | None = None, extra: dict | None = None) -> Path:
        """Writes the manifest as complete and moves the work folder into place atomically."""
        counts = dict(counts or {})
        for k, v in counts.items():
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"count {k!r} must be an int, got {type(v).__name__}")
        resolved = OmegaConf.to_container(self.cfg, resolve=True)
        (self.workdir / CONFIG_FILE).write_text(
            OmegaConf.to_yaml(OmegaConf.create(redact(resolved)))
        )
        files = hash_files(self.workdir)
        # Sizes let every later reuse notice a truncated file for the price of a stat.
        sizes = {relpath: (self.workdir / relpath).stat().st_size for relpath in files}
        extra = {**(extra or {}), "sizes": sizes}
        write_json_atomic(self.workdir / MANIFEST, self._manifest("complete", counts, files, extra))
        old = None
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(self.path, old)
        os.rename(self.workdir, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        release_lock(self.path)
        log.info("[%s] complete: %s", self.stage, self.path)
        return self.path
