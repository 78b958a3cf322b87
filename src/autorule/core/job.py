"""Running one stage: :class:`StageJob` finds its inputs, gives it a work folder and commits.

A stage writes into the ``.partial`` folder and commits by renaming it into place after writing a
manifest with ``status: complete``; a crash at any point leaves no folder that looks complete.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import uuid
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from autorule.core.files import write_json_atomic
from autorule.core.identity import (
    CONFIG_FILE,
    MANIFEST,
    StageInputError,
    artifact_path,
    config_hash_with,
    content_hash,
    hash_files,
    rules_file_record,
    stage_config,
    work_path,
)
from autorule.core.lock import acquire_lock, release_lock
from autorule.core.manifest import (
    check_files,
    is_complete,
    is_up_to_date,
    read_manifest,
    verify_hashes,
)
from autorule.core.provenance import git_sha, make_command, package_versions
from autorule.core.secrets import redact
from autorule.core.stage import RULES_STAGE, StageSpec, get_spec

log = logging.getLogger(__name__)

FAILED_CALLS = "failed_calls"  # the count of LLM calls that failed for good: > 0 is provisional


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
        self.config_hash = config_hash_with(cfg, stage, self._rules_file)
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
        return self._input_at(
            name, self.spec.stage_of(name), self.spec.config_for_input(self.cfg, name)
        )

    def _input_at(self, name: str, stage: str, input_cfg: DictConfig) -> Path:
        """Folder of the complete artifact of ``stage`` under ``input_cfg`` (the config input
        ``name`` is found with), recorded in the manifest's inputs as ``name``, so its
        recomputation makes this artifact out of date."""
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
        """Writes the manifest as complete and moves the work folder into place atomically.

        An artifact whose counts record failed LLM calls (``failed_calls`` > 0, allowed by the
        stage's ``max_failed_calls``) is committed ``provisional``: later stages may read it, but
        the next run of this stage recomputes it, replaying the cached answers and asking again
        only for the failed ones."""
        counts = dict(counts or {})
        for k, v in counts.items():
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"count {k!r} must be an int, got {type(v).__name__}")
        if counts.get(FAILED_CALLS, 0) > 0:
            extra = {**(extra or {}), "provisional": True}
            log.warning(
                "[%s] %d LLM calls failed: the artifact is provisional; re-run the same command "
                "to ask again for those calls only",
                self.stage,
                counts[FAILED_CALLS],
            )
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
