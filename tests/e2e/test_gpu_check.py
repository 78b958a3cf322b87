"""scripts/gpu_check.sh: says so and exits 0 without a GPU; its parts run on CPU in a dry mode."""

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_without_a_gpu_the_check_exits_at_once_saying_so():
    done = subprocess.run(
        ["bash", str(SCRIPTS / "gpu_check.sh")], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0
    assert "no NVIDIA GPU" in done.stdout and "nothing to check" in done.stdout


def test_every_part_runs_in_the_dry_mode(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPTS / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "gpu_check.json"
    rc = gpu_check.main(["--dry-run", "--out", str(out), "--root", str(tmp_path / "root")])
    report = json.loads(out.read_text())
    assert rc == 0, report
    parts = report["parts"]
    assert set(parts) == {
        "pipeline_bf16",
        "sft_zero2",
        "rm_zero3",
        "grpo_zero3",
        "vllm",
        "judge",
        "mfu",
    }
    assert all(entry["status"] == "ok" for entry in parts.values()), parts
    printed = capsys.readouterr().out
    assert "--use_deepspeed" in printed and "zero3.json" in printed  # the launch commands
    assert "pairs/s" in parts["judge"]["note"]
    mfu = parts["mfu"]["details"]
    assert mfu["packed"]["padding_share"] == 0 < mfu["padded"]["padding_share"]
    assert not (tmp_path / "root" / "sft").exists()  # a dry run writes no artifact
