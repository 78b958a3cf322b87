"""The launch commands of the training stages (dry runs: nothing is trained or written)."""

import json
import shlex

import pytest

from autorule.core.artifacts import artifact_path, config_hash
from autorule.core.config import CONF_DIR, compose
from autorule.pipeline import run_stage
from autorule.stages import extract, preprocess, rm, sft
from autorule.training.launch import launch_command


def dry_run(tmp_path, capsys, module, overrides):
    cfg = compose([*overrides, "dry_run=true", f"paths.root={tmp_path}"])
    module.run(cfg)
    assert not any(tmp_path.iterdir()), "a dry run must not write anything"
    return capsys.readouterr().out


def test_sft_on_one_8_gpu_node(tmp_path, capsys):
    out = dry_run(tmp_path, capsys, sft, ["stage=sft", "profile=paper", "launcher.num_processes=8"])
    command = out.splitlines()[1]
    assert (
        " -m accelerate.commands.launch --num_processes 8 --num_machines 1 --machine_rank 0 "
        in command
    )
    assert f"--use_deepspeed --deepspeed_config_file {CONF_DIR}/deepspeed/zero2.json" in command
    assert "--mixed_precision bf16 -m autorule.worker " in command
    assert command.endswith("/launch/config-machine0.yaml")
    assert "--main_process_ip" not in command
    assert "\n  global_batch=256 (micro 2 x 8 processes x accumulation 16)\n" in out
    assert f"\n  deepspeed config: {CONF_DIR}/deepspeed/zero2.json\n" in out
    assert "\n  input preprocess -> " in out and "(missing)" in out
    for arg in (
        "gradient_accumulation_steps=16",
        "per_device_train_batch_size=2",
        "learning_rate=5e-06",
        "lr_scheduler_type=constant_with_warmup",
        "warmup_steps=0.05",
        "max_grad_norm=10.0",
        "num_train_epochs=2.0",
        "max_length=2048",
        "bf16=True",
    ):
        assert f"\n  {arg}\n" in out


def test_rm_on_two_nodes_through_srun(tmp_path, capsys):
    out = dry_run(
        tmp_path,
        capsys,
        rm,
        [
            "stage=rm",
            "profile=paper",
            "launcher=slurm",
            "launcher.num_machines=2",
            "launcher.num_processes=16",
            "launcher.main_process_ip=gpu-a01",
        ],
    )
    srun = shlex.split(out.splitlines()[1])
    assert srun[:5] == ["srun", "--nodes=2", "--ntasks-per-node=1", "bash", "-c"]
    inner = srun[5]
    # Each node's shell fills in its own rank.
    assert "--machine_rank $SLURM_NODEID " in inner
    assert "--num_processes 16 --num_machines 2 " in inner
    assert "--main_process_ip gpu-a01 --main_process_port 29500" in inner
    assert f"--deepspeed_config_file {CONF_DIR}/deepspeed/zero3.json" in inner
    assert "--deepspeed_multinode_launcher standard" in inner
    assert "\n  global_batch=256 (micro 2 x 16 processes x accumulation 8)\n" in out
    assert f"\n  deepspeed config: {CONF_DIR}/deepspeed/zero3.json\n" in out
    sft_path = artifact_path(compose(["profile=paper", f"paths.root={tmp_path}"]), "sft")
    assert f"\n  init=sft -> {sft_path} (missing)\n" in out
    for arg in (
        "gradient_accumulation_steps=8",
        "learning_rate=5e-06",
        "warmup_steps=0.1",
        "max_grad_norm=5.0",
        "num_train_epochs=1.0",
        "bf16=True",
    ):
        assert f"\n  {arg}\n" in out


def test_second_machine_without_srun_gets_its_rank(tmp_path):
    cfg = compose(
        [
            "stage=sft",
            "profile=paper",
            "launcher.num_machines=2",
            "launcher.num_processes=16",
            "launcher.machine_rank=1",
            "launcher.main_process_ip=10.0.0.1",
            f"paths.root={tmp_path}",
        ]
    )
    cmd = launch_command(cfg, "sft", tmp_path / "c.yaml")
    assert cmd[cmd.index("--machine_rank") + 1] == "1"


def test_commands_parse_with_accelerate(tmp_path):
    from accelerate.commands.launch import launch_command_parser

    cfg = compose(
        [
            "stage=rm",
            "profile=paper",
            "launcher.num_machines=2",
            "launcher.num_processes=16",
            "launcher.main_process_ip=10.0.0.1",
        ]
    )
    cmd = launch_command(cfg, "rm", tmp_path / "c.yaml")
    args = launch_command_parser().parse_args(cmd[3:])
    assert args.module and args.training_script == "autorule.worker"
    assert args.num_processes == 16 and args.use_deepspeed


def test_uneven_batch_and_missing_master_fail_early(tmp_path, capsys):
    with pytest.raises(ValueError, match="not divisible"):
        dry_run(tmp_path, capsys, sft, ["stage=sft", "profile=paper", "launcher.num_processes=6"])
    with pytest.raises(ValueError, match="main_process_ip"):
        dry_run(
            tmp_path,
            capsys,
            sft,
            ["stage=sft", "profile=paper", "launcher.num_machines=2", "launcher.num_processes=16"],
        )


@pytest.mark.parametrize("name, stage", [("zero2", 2), ("zero3", 3)])
def test_deepspeed_configs_leave_batch_values_to_the_trainer(name, stage):
    ds = json.loads((CONF_DIR / "deepspeed" / f"{name}.json").read_text())
    assert ds["zero_optimization"]["stage"] == stage
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert ds[key] == "auto"


def test_rm_from_base_names_the_model_and_reads_no_sft(tmp_path, capsys):
    out = dry_run(tmp_path, capsys, rm, ["stage=rm", "profile=paper", "rm.init=base"])
    assert "\n  init=base -> meta-llama/Meta-Llama-3-8B\n" in out
    assert "input sft" not in out


def test_deepspeed_on_one_process_goes_through_accelerate(tmp_path, capsys):
    # ZeRO-3 with CPU offload on one GPU is how an 8B reward model fits on one card.
    out = dry_run(tmp_path, capsys, rm, ["stage=rm", "profile=paper", "launcher.num_processes=1"])
    command = out.splitlines()[1]
    assert " -m accelerate.commands.launch --num_processes 1 --num_machines 1 " in command
    assert f"--use_deepspeed --deepspeed_config_file {CONF_DIR}/deepspeed/zero3.json" in command
    assert "\n  global_batch=256 (micro 2 x 1 processes x accumulation 128)\n" in out


def test_one_process_without_deepspeed_trains_in_process(tmp_path, capsys):
    out = dry_run(tmp_path, capsys, sft, ["stage=sft", "profile=paper", "sft.deepspeed=null"])
    assert out.splitlines()[1].startswith("in-process")
    assert "accelerate" not in out and "--use_deepspeed" not in out
    assert "\n  deepspeed: none\n" in out


@pytest.mark.parametrize(
    "processes, machines, rank, message",
    [
        (3, 2, 0, "launcher.num_processes=3 is the total over all machines"),
        (1, 2, 0, "a multiple of, launcher.num_machines=2"),
        (0, 1, 0, "must be >= 1"),
        (16, 2, 2, r"launcher.machine_rank=2 must be in \[0, launcher.num_machines=2\)"),
    ],
)
def test_process_counts_that_accelerate_would_misread_fail_early(
    tmp_path, capsys, processes, machines, rank, message
):
    with pytest.raises(ValueError, match=message):
        dry_run(
            tmp_path,
            capsys,
            sft,
            [
                "stage=sft",
                "profile=paper",
                f"launcher.num_processes={processes}",
                f"launcher.num_machines={machines}",
                f"launcher.machine_rank={rank}",
                "launcher.main_process_ip=10.0.0.1",
            ],
        )


def must_not_run(cfg):
    raise AssertionError("a dry run ran a stage that has no dry run")


def test_pipeline_dry_run_runs_no_non_training_stage(tmp_path, capsys, monkeypatch):
    """Under profile=paper preprocess would download from the hub and extract would pay for LLM
    calls: a dry run prints their commands and artifact folders instead."""
    monkeypatch.setattr(preprocess, "run", must_not_run)
    monkeypatch.setattr(extract, "run", must_not_run)
    cfg = compose(["stage=pipeline", "profile=paper", "dry_run=true", f"paths.root={tmp_path}"])
    done = run_stage(cfg)
    out = capsys.readouterr().out
    assert not any(tmp_path.iterdir()), "a dry run must not write anything"
    for name in ("preprocess", "extract", "generate", "evaluate", "report"):
        assert f"\n  python -m autorule stage={name} profile=paper paths.root={tmp_path}\n" in out
        assert f"\n  artifact {done[name]} (no artifact yet: the run would make it)\n" in out
    for name in ("sft", "rm", "grpo"):
        assert f"[autorule] dry run of stage {name} " in out
    assert list(done) == list(cfg.pipeline.stages)
    assert list(done)[:5] == ["preprocess", "extract", "sft", "rm", "grpo"]
    for name, path in done.items():
        assert f"\n[autorule] {name}: {path} (dry run, nothing written)\n" in out


def test_dry_run_of_one_stage_says_its_artifact_exists(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(preprocess, "run", must_not_run)
    cfg = compose(["stage=preprocess", "dry_run=true", f"paths.root={tmp_path}"])
    folder = artifact_path(cfg, "preprocess")
    folder.mkdir(parents=True)
    manifest = {
        "status": "complete",
        "config_hash": config_hash(cfg, "preprocess"),
        "artifact_hash": "x",
        "files": {},
        "inputs": {},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert run_stage(cfg) == {"preprocess": folder}
    out = capsys.readouterr().out
    assert f"artifact {folder} (exists and is up to date: the run would do nothing)" in out
    assert f"[autorule] preprocess: {folder} (dry run, nothing written)" in out
