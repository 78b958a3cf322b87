"""Benchmark: what checking a large artifact on reuse costs (``make bench``).

Every reuse of an artifact checks the sizes its manifest recorded (one ``stat`` per file);
``verify=true`` also re-hashes every file against the manifest's sha256. This times both on a
2 GiB toy artifact laid out like a saved model (four 512 MiB shards and a few small files), with
the files in the page cache (warm: right after they were written) and out of it (cold: evicted
with ``posix_fadvise``), and extrapolates to the 16 GB of a Llama-3-8B checkpoint in bf16.

The figures are printed. With ``AUTORULE_BENCH_WRITE_DOCS=1`` they are also written into
docs/benchmarks.md (section "Verifying artifacts on reuse"), only when the asserts pass.
"""

import os
import platform
import time
from pathlib import Path

import pytest
from benchdoc import write_section

from autorule.core import stage as stage_registry
from autorule.core.artifacts import StageJob, is_up_to_date
from autorule.core.stage import StageSpec

pytestmark = pytest.mark.bench

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
WRITE_DOCS = "AUTORULE_BENCH_WRITE_DOCS"  # =1: record the figures in DOC when the asserts pass
COMMAND = (
    f"{WRITE_DOCS}=1 .venv/bin/python -m pytest -q -m bench -s tests/benchmarks/bench_verify.py"
)
SHARDS, SHARD_MIB = 4, 512
CHECKPOINT_GB = 16.1  # Llama-3-8B in bf16: 8.03e9 parameters x 2 bytes


def _write_artifact(cfg) -> Path:
    job = StageJob(cfg, "big")
    model = job.workdir / "model"
    model.mkdir()
    block = os.urandom(64 << 20)  # repeated: sha256 reads every byte all the same
    for shard in range(SHARDS):
        with open(model / f"model-{shard:05d}-of-{SHARDS:05d}.safetensors", "wb") as f:
            for _ in range(SHARD_MIB // 64):
                f.write(block)
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        (model / name).write_text('{"small": true}\n')
    (job.workdir / "metrics.json").write_text('{"loss": 1.0}\n')
    return job.commit({"shards": SHARDS})


def _evict(folder: Path) -> None:
    """Drops the folder's files from the page cache, so the next read comes from the disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _timed(cfg) -> tuple[float, bool]:
    start = time.perf_counter()
    fresh, _ = is_up_to_date(cfg, "big")
    return time.perf_counter() - start, fresh


def _write_doc(section: str) -> None:
    write_section("verify-artifacts", "Verifying artifacts on reuse", section)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def test_verify_cost_on_a_large_artifact(make_cfg, monkeypatch):
    load_before = os.getloadavg()[0]  # other work on the cores makes the figures noisier
    monkeypatch.setitem(stage_registry._REGISTERED, "big", StageSpec(name="big", keys=("seed",)))
    cfg = make_cfg()
    t0 = time.perf_counter()
    path = _write_artifact(cfg)
    commit = time.perf_counter() - t0  # writing the files, then hashing them at commit
    size_gib = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / (1 << 30)

    sizes, fresh = _timed(cfg)
    assert fresh
    verify_cfg = make_cfg("verify=true")
    warm, fresh = _timed(verify_cfg)
    assert fresh
    _evict(path)
    cold, fresh = _timed(verify_cfg)
    assert fresh
    cold_sizes, _ = _timed(cfg)

    # The check must see what it is for: one flipped byte in the last shard, same size.
    last = sorted((path / "model").glob("*.safetensors"))[-1]
    with open(last, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert is_up_to_date(cfg, "big")[0]  # sizes alone cannot see it
    fresh, reason = is_up_to_date(verify_cfg, "big")
    assert not fresh and last.name in reason

    gb = size_gib * (1 << 30) / 1e9
    rows = [
        ("sizes only (default), warm", sizes),
        ("sizes only (default), cold", cold_sizes),
        ("`verify=true`, warm (files in the page cache)", warm),
        ("`verify=true`, cold (files evicted first)", cold),
    ]
    table = "\n".join(
        f"| {name} | {seconds:.3f} | "
        + (
            f"{gb / seconds:.2f} | {CHECKPOINT_GB * seconds / gb:.0f} s |"
            if "verify" in name
            else "- | - |"
        )
        for name, seconds in rows
    )
    section = (
        f"`is_up_to_date` on a {size_gib:.2f} GiB toy artifact laid out like a saved model "
        f"({SHARDS} shards of {SHARD_MIB} MiB, three small JSON files, a metrics file); writing "
        f"it and hashing it at commit took {commit:.1f} s. Sizes are checked on every reuse; "
        "`verify=true` also re-hashes every file (sha256). The last column extrapolates to the "
        f"{CHECKPOINT_GB} GB of a Llama-3-8B checkpoint in bf16.\n\n"
        "| check | time (s) | GB/s | 16.1 GB checkpoint |\n|---|---|---|---|\n"
        f"{table}\n\n"
        "Both checks found the artifact intact; after one byte of the last shard was flipped "
        "(same size), only `verify=true` reported it, naming the file. "
        f"Machine: {os.cpu_count()} CPU cores ({_cpu()}), Python {platform.python_version()}, "
        f"local disk, 1-minute load average {load_before:.2f} at the start and "
        f"{os.getloadavg()[0]:.2f} at the end. Cold reads "
        "depend on the disk (and on whether the kernel honours the eviction), so shared or "
        "network file systems will differ. Written by the benchmark itself when its asserts "
        f"pass and `{WRITE_DOCS}=1` is set. Command:\n\n```\n{COMMAND}\n```"
    )
    print("\n" + section)
    assert sizes < 0.1, f"the size check should cost a few stats, took {sizes:.3f} s"
    assert warm > sizes
    if os.environ.get(WRITE_DOCS) == "1":
        _write_doc(section)
