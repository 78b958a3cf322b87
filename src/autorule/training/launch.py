"""How a training stage runs: in-process, or as ``accelerate launch`` workers on many GPUs.

Hydra composes the config once, in the process that runs the stage. With one process
(``launcher.num_processes=1``, ``launcher.num_machines=1``) the stage trains in that process. With
more, that process (on machine 0) prepares the artifact's work folder, saves the resolved config
into it (``launch/config-machine<rank>.yaml``) and starts the workers::

    accelerate launch --num_processes N --num_machines M --machine_rank R \\
        [--main_process_ip IP --main_process_port P] \\
        [--use_deepspeed --deepspeed_config_file conf/deepspeed/zero2.json] \\
        --mixed_precision bf16 -m autorule.worker <work folder>/launch/config-machine0.yaml

Every worker loads that saved config (never Hydra again) and writes into the same work folder;
the trainers write checkpoints and the final model from global rank 0 only. When the workers
exit, machine 0 commits the artifact (manifest, atomic rename). With ``launcher.srun=true`` and
several machines, one ``srun`` task per node runs the accelerate command with the node's
``$SLURM_NODEID`` as machine rank. ``dry_run=true`` prints the commands, the global batch
arithmetic, the DeepSpeed config, the inputs and the trainer's hyperparameters instead of running
anything. ``launcher.num_processes`` counts the processes of all machines together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autorule.core.artifacts import (
    LAUNCH_DIR,
    StageJob,
    artifact_path,
    input_path,
    is_complete,
    read_manifest,
    work_path,
)
from autorule.core.config import CONF_DIR, ConfigError
from autorule.core.files import write_text_atomic
from autorule.core.secrets import redact
from autorule.core.stage import get_spec
from autorule.training.arguments import METRICS, trainer_kwargs
from autorule.training.loop import finish_tracker

log = logging.getLogger(__name__)

# train(cfg, workdir, inputs, callbacks) -> metrics; writes <workdir>/model and metrics.json.
TrainFn = Callable[[DictConfig, Path, dict[str, Path], Sequence[Any]], dict[str, Any]]
# Metrics that the manifest also records as counts (integers).
COUNT_KEYS = ("train_rows", "eval_rows", "global_step", "scored_pairs")
NODE_RANK = "$SLURM_NODEID"  # expanded by the shell of each srun task


def world_size(cfg: DictConfig) -> int:
    """Training processes over all machines."""
    return int(cfg.launcher.num_processes)


def launched(cfg: DictConfig, stage: str) -> bool:
    """Whether ``stage`` trains in ``accelerate launch`` workers rather than in this process.

    Several processes or machines need the launcher; so does DeepSpeed on a single process
    (``<stage>.deepspeed`` set): ZeRO-3 with CPU offload is how an 8B reward model fits on one
    GPU. ``deepspeed: null`` on one process trains in-process.
    """
    return world_size(cfg) > 1 or int(cfg.launcher.num_machines) > 1 or bool(cfg[stage].deepspeed)


def check_launcher(cfg: DictConfig) -> None:
    """Fails early, naming the keys, on process counts that accelerate would misread.

    ``launcher.num_processes`` is the total over all machines, as accelerate's
    ``--num_processes``: accelerate starts ``num_processes // num_machines`` per machine, so an
    uneven total would silently drop processes (and zero per machine would start none).
    """
    launcher = cfg.launcher
    procs, machines = world_size(cfg), int(launcher.num_machines)
    rank = int(launcher.machine_rank)
    if procs < 1 or machines < 1:
        raise ConfigError(
            f"launcher.num_processes={procs} and launcher.num_machines={machines} must be >= 1"
        )
    if machines > 1 and (procs < machines or procs % machines):
        raise ConfigError(
            f"launcher.num_processes={procs} is the total over all machines and must be at least, "
            f"and a multiple of, launcher.num_machines={machines} (the same number of processes "
            f"on every machine), e.g. launcher.num_processes={machines * 8} for {machines} "
            "machines of 8 GPUs"
        )
    if not 0 <= rank < machines:
        raise ConfigError(
            f"launcher.machine_rank={rank} must be in [0, launcher.num_machines={machines})"
        )


def deepspeed_file(cfg: DictConfig, stage: str) -> Path | None:
    """The DeepSpeed JSON of ``<stage>.deepspeed`` (None when unset); it must exist."""
    name = cfg[stage].deepspeed
    if not name:
        return None
    path = CONF_DIR / "deepspeed" / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{stage}.deepspeed={name}: no {path}")
    return path


def accelerate_command(cfg: DictConfig, stage: str, config_file: Path) -> list[str]:
    """The ``accelerate launch`` command line that runs ``stage``'s workers on this machine."""
    check_launcher(cfg)
    launcher, section = cfg.launcher, cfg[stage]
    machines = int(launcher.num_machines)
    rank = NODE_RANK if launcher.srun and machines > 1 else str(launcher.machine_rank)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(world_size(cfg)),
        "--num_machines",
        str(machines),
        "--machine_rank",
        rank,
    ]
    if machines > 1:
        if not launcher.main_process_ip:
            raise ValueError(
                "launcher.num_machines > 1 needs launcher.main_process_ip "
                "(the address of machine 0)"
            )
        cmd += [
            "--main_process_ip",
            str(launcher.main_process_ip),
            "--main_process_port",
            str(launcher.main_process_port),
        ]
    ds_file = deepspeed_file(cfg, stage)
    if ds_file is not None:
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(ds_file)]
        if machines > 1:  # accelerate's default multi-node DeepSpeed launcher is pdsh
            cmd += ["--deepspeed_multinode_launcher", "standard"]
    cmd += ["--mixed_precision", "bf16" if section.precision == "bf16" else "no"]
    return [*cmd, "-m", "autorule.worker", str(config_file)]


def launch_command(cfg: DictConfig, stage: str, config_file: Path) -> list[str]:
    """The command this process runs: the accelerate command, wrapped in srun when asked."""
    cmd = accelerate_command(cfg, stage, config_file)
    machines = int(cfg.launcher.num_machines)
    if not (cfg.launcher.srun and machines > 1):
        return cmd
    inner = " ".join(a if a == NODE_RANK else shlex.quote(a) for a in cmd)
    srun = ["srun", f"--nodes={machines}", "--ntasks-per-node=1"]
    # srun >= 22.05 no longer inherits sbatch's --cpus-per-task: without it each node's launcher
    # (and all its workers and data loaders) would get one CPU.
    if cfg.launcher.get("cpus_per_task"):
        srun.append(f"--cpus-per-task={int(cfg.launcher.cpus_per_task)}")
    return [*srun, "bash", "-c", inner]


def show(cmd: Sequence[str]) -> str:
    """A command as a shell line (srun's ``bash -c`` argument stays single-quoted)."""
    return shlex.join(cmd)


def worker_config_path(workdir: Path, cfg: DictConfig) -> Path:
    return workdir / LAUNCH_DIR / f"config-machine{int(cfg.launcher.machine_rank)}.yaml"


def save_worker_config(cfg: DictConfig, stage: str, workdir: Path, inputs: dict[str, Path]) -> Path:
    """Writes the resolved config (secrets masked) plus the folders the workers use."""
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    resolved["worker"] = {
        "stage": stage,
        "workdir": str(workdir),
        "inputs": {k: str(v) for k, v in inputs.items()},
    }
    resolved["force"] = False  # the work folder is prepared; workers must never clear it
    path = worker_config_path(workdir, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.create(resolved)))
    return path


def artifact_state(folder: Path) -> str:
    """``exists`` when ``folder`` holds a complete artifact, else ``missing``."""
    return "exists" if is_complete(read_manifest(folder)) else "missing"


def dry_run_report(cfg: DictConfig, stage: str, workdir: Path, notes: Sequence[str] = ()) -> str:
    """What the stage would run: the command, the batch arithmetic, the DeepSpeed config, the
    inputs (and ``notes`` from the stage), then the trainer's hyperparameters."""
    section, world = cfg[stage], world_size(cfg)
    if launched(cfg, stage):
        command = show(launch_command(cfg, stage, worker_config_path(workdir, cfg)))
        ds_file = deepspeed_file(cfg, stage)
        deepspeed = f"deepspeed config: {ds_file}" if ds_file else "deepspeed: none"
    else:
        command = "in-process (one process, deepspeed: null: no launcher)"
        deepspeed = "deepspeed: none"
    args = trainer_kwargs(section, world, get_spec(stage, cfg).trainer_args)
    lines = [
        f"[autorule] dry run of stage {stage} (processes={world}, "
        f"machines={cfg.launcher.num_machines})",
        command,
        f"  global_batch={section.global_batch_size} (micro {args['per_device_train_batch_size']}"
        f" x {world} processes x accumulation {args['gradient_accumulation_steps']})",
        f"  {deepspeed}",
    ]
    for name in get_spec(stage, cfg).inputs_for(cfg):
        folder = input_path(cfg, stage, name)
        lines.append(f"  input {name} -> {folder} ({artifact_state(folder)})")
    lines += [f"  {note}" for note in notes]
    lines.append(f"[autorule] {stage} trainer arguments:")
    lines += [f"  {k}={v}" for k, v in args.items()]
    return "\n".join(lines)


def run_training(
    cfg: DictConfig,
    stage: str,
    train: TrainFn,
    callbacks: Sequence[Any] = (),
    describe: Callable[[DictConfig], Sequence[str]] | None = None,
) -> Path:
    """The body of a training stage's ``run(cfg)``; returns the artifact folder.

    ``callbacks`` (transformers ``TrainerCallback`` objects) reach the trainer only in-process.
    ``describe`` gives the stage's own lines of the dry-run report.
    """
    check_launcher(cfg)
    path = artifact_path(cfg, stage)
    input_names = get_spec(stage, cfg).inputs_for(cfg)
    if cfg.get("dry_run"):
        notes = describe(cfg) if describe is not None else ()
        print(dry_run_report(cfg, stage, work_path(path), notes), flush=True)
        return path
    machine0 = int(cfg.launcher.machine_rank) == 0
    job = StageJob(cfg, stage) if machine0 else None
    # The job's lock is released if training fails; other machines hold no job.
    with job if job is not None else contextlib.nullcontext():
        if job is not None and job.done:
            return job.path
        if job is not None:
            workdir, inputs = job.workdir, {n: job.input(n) for n in input_names}
        else:  # other machines only start their workers; machine 0 prepares and commits
            workdir, inputs = work_path(path), {n: input_path(cfg, stage, n) for n in input_names}

        if not launched(cfg, stage):
            # Launched workers are processes of their own, whose tracker run ends when they exit.
            try:
                metrics = train(cfg, workdir, inputs, callbacks)
            except BaseException:
                finish_tracker(failed=True)
                raise
            finish_tracker()
        else:
            if callbacks:
                log.warning("[%s] callbacks are not passed to launched workers", stage)
            config_file = save_worker_config(cfg, stage, workdir, inputs)
            cmd = launch_command(cfg, stage, config_file)
            log.info("[%s] launching: %s", stage, show(cmd))
            subprocess.run(cmd, check=True)
            if job is None:
                return path
            metrics = json.loads((workdir / METRICS).read_text())
        counts = {k: int(metrics[k]) for k in COUNT_KEYS if metrics.get(k) is not None}
        # What the stage's LLM roles cost (grpo's judge and grader) goes beside the counts, as
        # the stages without training record it (autorule.llm.base.record_usage).
        usage = {"llm_usage": metrics["llm_usage"]} if "llm_usage" in metrics else {}
        return job.commit(counts, extra={"metrics": metrics, **usage})
