"""The stage/artifact contract, on toy stages registered for the test."""

import json
import logging
import random
import uuid

import pytest
from omegaconf import open_dict

from autorule.core import job as job_module
from autorule.core import stage as stage_registry
from autorule.core.artifacts import (
    StageInputError,
    StageJob,
    artifact_path,
    config_hash,
    is_up_to_date,
    read_manifest,
)
from autorule.core.stage import StageSpec


@pytest.fixture(autouse=True)
def toy_stages(monkeypatch):
    # "up" writes content that depends on the config, plus a nonce when asked, so a forced re-run
    # can change (or keep) its content; "down" reads it.
    registry = stage_registry._REGISTERED
    monkeypatch.setitem(registry, "up", StageSpec(name="up", keys=("seed",)))
    monkeypatch.setitem(
        registry, "down", StageSpec(name="down", inputs=("up",), keys=("dataset.name",))
    )


def run_up(cfg, nonce=False):
    job = StageJob(cfg, "up")
    if job.done:
        return job, False
    text = f"seed={cfg.seed}" + (f" {uuid.uuid4()}" if nonce else "")
    (job.workdir / "data.txt").write_text(text)
    job.commit({"rows": 1})
    return job, True


def run_down(cfg):
    job = StageJob(cfg, "down")
    if job.done:
        return job, False
    text = (job.input("up") / "data.txt").read_text()
    (job.workdir / "copy.txt").write_text(text)
    job.commit({"rows": 1})
    return job, True


def set_force(cfg, value=True):
    with open_dict(cfg):
        cfg.force = value
    return cfg


def test_manifest_fields(make_cfg):
    cfg = make_cfg()
    job, ran = run_up(cfg)
    assert ran
    m = read_manifest(job.path)
    for key in (
        "stage",
        "status",
        "config_hash",
        "inputs",
        "counts",
        "created_at",
        "git_sha",
        "versions",
        "artifact_hash",
        "files",
    ):
        assert key in m, key
    assert m["stage"] == "up" and m["status"] == "complete"
    assert m["config_hash"] == config_hash(cfg, "up")
    assert m["counts"] == {"rows": 1}
    assert "torch" in m["versions"] and "python" in m["versions"]
    assert set(m["files"]) == {"data.txt", "config.yaml"}
    assert job.path.name.startswith("uf-") and job.path.parent.name == "up"
    _, ran_down = run_down(cfg)
    down = read_manifest(artifact_path(cfg, "down"))
    assert down["inputs"]["up"] == {"path": str(job.path), "hash": m["artifact_hash"]}


def test_second_run_does_no_work_and_says_so(make_cfg, caplog):
    cfg = make_cfg()
    job, _ = run_up(cfg)
    mtime = (job.path / "manifest.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="autorule.core.job"):
        _, ran = run_up(cfg)
    assert not ran
    assert "nothing to do" in caplog.text
    assert (job.path / "manifest.json").stat().st_mtime_ns == mtime


def test_force_recomputes(make_cfg):
    cfg = make_cfg()
    run_up(cfg, nonce=True)
    before = read_manifest(artifact_path(cfg, "up"))["artifact_hash"]
    _, ran = run_up(set_force(cfg), nonce=True)
    assert ran
    assert read_manifest(artifact_path(cfg, "up"))["artifact_hash"] != before
    # No leftovers from the swap (the empty lock file stays).
    assert [
        p.name for p in artifact_path(cfg, "up").parent.iterdir() if not p.name.endswith(".lock")
    ] == [artifact_path(cfg, "up").name]


def test_configs_get_their_own_folders_and_share_upstream(make_cfg):
    a, b = make_cfg("seed=1"), make_cfg("seed=2")
    assert artifact_path(a, "up") != artifact_path(b, "up")
    # A key outside a stage's spec does not change its folder: experiments share the artifact.
    c = make_cfg("seed=1", "dataset.revision=main")
    assert artifact_path(a, "up") == artifact_path(c, "up")
    # Downstream hashes include the upstream config hash.
    assert artifact_path(a, "down") != artifact_path(b, "down")


def test_preprocess_hash_ignores_speed_knobs(make_cfg):
    base = config_hash(make_cfg(), "preprocess")
    assert config_hash(make_cfg("preprocess.batch_size=7"), "preprocess") == base
    assert config_hash(make_cfg("preprocess.filter.max_tokens=256"), "preprocess") != base
    assert config_hash(make_cfg("seed=5"), "preprocess") == base


def test_preprocess_is_named_by_the_data_not_its_path(make_cfg, tmp_path):
    """Two copies of the same data share the artifact; edited data gets a new one."""
    import shutil

    bundled = make_cfg().dataset.path
    copy = tmp_path / "copy"
    shutil.copytree(bundled, copy)
    base = config_hash(make_cfg(f"dataset.path={bundled}"), "preprocess")
    assert config_hash(make_cfg(f"dataset.path={copy}"), "preprocess") == base
    assert config_hash(make_cfg(f"dataset.path={copy}/"), "preprocess") == base
    (copy / ".cache").mkdir()  # hidden files (caches, locks) are not data
    (copy / ".cache" / "x.lock").write_text("")
    assert config_hash(make_cfg(f"dataset.path={copy}"), "preprocess") == base
    with open(copy / "data" / "test_sft-00000-of-00001.parquet", "ab") as f:
        f.write(b"edited")
    assert config_hash(make_cfg(f"dataset.path={copy}"), "preprocess") != base
    # A hub id is identified by its id and pinned revision.
    hub = config_hash(make_cfg("dataset.path=org/data"), "preprocess")
    assert hub != base
    assert (
        config_hash(make_cfg("dataset.path=org/data", "dataset.revision=abc"), "preprocess") != hub
    )


def test_preprocess_hash_ignores_the_other_datasets_settings(make_cfg):
    uf, mt = make_cfg("dataset=uf"), make_cfg("dataset=mt")
    uf_hash, mt_hash = config_hash(uf, "preprocess"), config_hash(mt, "preprocess")
    for key in ("preprocess.mt_first_question_only=true", "preprocess.mt_train_per_block=4"):
        assert config_hash(make_cfg("dataset=uf", key), "preprocess") == uf_hash
        assert config_hash(make_cfg("dataset=mt", key), "preprocess") != mt_hash
    for key in ("preprocess.filter.max_tokens=256", "preprocess.test_subset_size=3"):
        assert config_hash(make_cfg("dataset=mt", key), "preprocess") == mt_hash
        assert config_hash(make_cfg("dataset=uf", key), "preprocess") != uf_hash
    assert config_hash(make_cfg("dataset=mt", "model=llama3_8b"), "preprocess") == mt_hash


def test_upstream_recompute_invalidates_downstream(make_cfg):
    cfg = make_cfg()
    run_up(cfg, nonce=True)
    run_down(cfg)
    assert is_up_to_date(cfg, "down") == (True, "complete and up to date")
    # Forcing upstream into *identical* content keeps downstream current...
    run_up(set_force(make_cfg()), nonce=False)
    run_up(set_force(make_cfg()), nonce=False)
    run_down(cfg)
    assert is_up_to_date(cfg, "down")[0]
    # ...even when the forced run was started differently (the saved config.yaml records the
    # overrides and force=true, but it is not content)...
    forced = set_force(make_cfg())
    with open_dict(forced):
        forced.run.overrides = ["force=true", "hydra.verbose=true"]
    run_up(forced, nonce=False)
    assert is_up_to_date(cfg, "down")[0]
    # ...but new content makes it out of date, and the next run recomputes it.
    run_up(set_force(make_cfg()), nonce=True)
    fresh, reason = is_up_to_date(cfg, "down")
    assert not fresh and reason == "upstream 'up' was recomputed"
    _, ran = run_down(cfg)
    assert ran and is_up_to_date(cfg, "down")[0]


def test_crash_mid_stage_leaves_nothing_complete(make_cfg):
    cfg = make_cfg()
    job = StageJob(cfg, "up")
    (job.workdir / "data.txt").write_text("half")
    # The stage dies here (no commit).
    assert not job.path.exists()
    assert read_manifest(job.workdir)["status"] == "running"
    assert is_up_to_date(cfg, "up") == (False, "no artifact yet")
    with pytest.raises(StageInputError):
        run_down(cfg)
    _, ran = run_up(cfg)  # the next run starts over and completes
    assert ran and (artifact_path(cfg, "up") / "data.txt").read_text() == "seed=0"


def test_crash_during_commit_swap_leaves_nothing_complete(make_cfg, monkeypatch):
    cfg = make_cfg()
    run_up(cfg)
    real_rename = job_module.os.rename
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old artifact was moved away; die before the new one lands
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(job_module.os, "rename", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_up(set_force(make_cfg()), nonce=True)
    monkeypatch.setattr(job_module.os, "rename", real_rename)
    assert not artifact_path(cfg, "up").exists()
    assert not is_up_to_date(cfg, "up")[0]


def test_corrupt_manifest_is_not_complete(make_cfg):
    cfg = make_cfg()
    job, _ = run_up(cfg)
    (job.path / "manifest.json").write_text("{not json")
    assert is_up_to_date(cfg, "up") == (False, "no artifact yet")


def test_missing_input_names_the_command(make_cfg):
    cfg = make_cfg("dataset=mt", "seed=3")
    with pytest.raises(StageInputError) as err:
        run_down(cfg)
    msg = str(err.value)
    assert "python -m autorule stage=up" in msg
    assert "dataset=mt" in msg and "seed=3" in msg
    assert "missing" in msg
    assert not artifact_path(cfg, "down").exists()


def test_counts_must_be_integers(make_cfg):
    job = StageJob(make_cfg(), "up")
    with pytest.raises(TypeError, match="rows"):
        job.commit({"rows": 1.5})


def test_manifest_is_valid_json_with_sorted_keys(make_cfg):
    job, _ = run_up(make_cfg())
    text = (job.path / "manifest.json").read_text()
    assert json.loads(text)["stage"] == "up"


def test_concurrent_runs_of_one_stage_compute_it_once(make_cfg, tmp_path):
    """A second process that needs the same artifact waits for the first, then reuses it."""
    import multiprocessing
    import time

    cfg = make_cfg()
    started = tmp_path / "started"

    def slow_writer():
        job = StageJob(cfg, "up")
        started.write_text("")
        time.sleep(1.5)  # the other process arrives while this one is still working
        (job.workdir / "data.txt").write_text("written by the first process")
        job.commit({"rows": 1})

    child = multiprocessing.get_context("fork").Process(target=slow_writer)
    child.start()
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    _, ran = run_up(cfg)
    child.join(30)
    assert child.exitcode == 0
    assert not ran  # waited, then found the artifact complete
    path = artifact_path(cfg, "up")
    assert (path / "data.txt").read_text() == "written by the first process"
    assert is_up_to_date(cfg, "up")[0]


def test_content_hash_ignores_records_of_how_the_run_was_started():
    from autorule.core.artifacts import content_hash

    files = {
        "model/model.safetensors": "w1",
        "config.yaml": "c1",
        "model/training_args.bin": "t1",
        "launch/config-machine0.yaml": "l1",
    }
    restarted = {
        **files,
        "config.yaml": "c2",
        "model/training_args.bin": "t2",
        "launch/config-machine0.yaml": "l2",
    }
    assert content_hash("h", files) == content_hash("h", restarted)
    assert content_hash("h", files) != content_hash("h", {**files, "model/model.safetensors": "w2"})
    assert content_hash("h", files) != content_hash("g", files)


def test_a_failed_stage_releases_its_lock_at_once(make_cfg):
    """Other processes waiting for the artifact must not wait for this process to exit."""
    import fcntl
    import multiprocessing
    import os

    from autorule.core.artifacts import lock_path

    cfg = make_cfg()
    with pytest.raises(RuntimeError, match="boom"):
        with StageJob(cfg, "up"):
            raise RuntimeError("boom")

    def try_lock(q):
        fd = os.open(lock_path(artifact_path(cfg, "up")), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            q.put("free")
        except BlockingIOError:
            q.put("held")

    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=try_lock, args=(q,))
    child.start()
    child.join(30)
    assert q.get(timeout=5) == "free"
    # The same process can run the stage again right away.
    _, ran = run_up(cfg)
    assert ran


UNREADABLE = {
    "a list": b"[1, 2]",
    "random bytes": bytes(random.Random(0).randrange(256) for _ in range(256)),
    "complete without its fields": b'{"status": "complete"}',
    "a field of the wrong type": b'{"status": "complete", "config_hash": 1, "artifact_hash": 2}',
    "a string": b'"complete"',
    "nested too deep": b"[" * 100_000,
}


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("content", UNREADABLE)
def test_an_unreadable_manifest_counts_as_no_artifact(make_cfg, content, force):
    cfg = make_cfg()
    job, _ = run_up(cfg)
    (job.path / "manifest.json").write_bytes(UNREADABLE[content])
    assert read_manifest(job.path) is None
    assert is_up_to_date(cfg, "up") == (False, "no artifact yet")
    with pytest.raises(StageInputError, match="its manifest.json cannot be read"):
        run_down(cfg)
    _, ran = run_up(set_force(cfg, force))
    assert ran and is_up_to_date(cfg, "up")[0]


def test_file_sizes_are_recorded_and_checked_on_reuse(make_cfg):
    cfg = make_cfg()
    job, _ = run_up(cfg)
    manifest = read_manifest(job.path)
    assert manifest["sizes"] == {
        name: (job.path / name).stat().st_size for name in manifest["files"]
    }
    (job.path / "data.txt").write_text("seed")  # truncated
    assert is_up_to_date(cfg, "up") == (
        False,
        "file data.txt is corrupted: it has 4 bytes where the manifest recorded 6",
    )
    with pytest.raises(StageInputError, match="its file data.txt is corrupted"):
        run_down(cfg)
    (job.path / "data.txt").unlink()
    assert is_up_to_date(cfg, "up") == (False, "file data.txt is missing")
    _, ran = run_up(cfg)  # recomputed without force=true
    assert ran and is_up_to_date(cfg, "up")[0]
    run_down(cfg)


def test_a_provisional_artifact_is_recomputed(make_cfg):
    cfg = make_cfg()
    job = StageJob(cfg, "up")
    (job.workdir / "data.txt").write_text("stand-in")
    job.commit({"rows": 0}, extra={"provisional": True})
    fresh, reason = is_up_to_date(cfg, "up")
    assert not fresh and "provisional" in reason
    run_down(cfg)  # still usable as an input meanwhile
    _, ran = run_up(cfg)
    assert ran and is_up_to_date(cfg, "up")[0]
