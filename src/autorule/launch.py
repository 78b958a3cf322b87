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
``$SLURM_NODEID`` as machine rank. ``dry_run=true`` prints the commands and the trainer's
hyperparameters instead of running anything.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autorule.artifacts import StageJob, artifact_path, work_path
from autorule.config import CONF_DIR
from autorule.secrets import redact
from autorule.stages import SPECS
from autorule.training import METRICS, trainer_kwargs

log = logging.getLogger(__name__)

# train(cfg, workdir, inputs, callbacks) -> metrics; writes <workdir>/model and metrics.json.
TrainFn = Callable[[DictConfig, Path, dict[str, Path], Sequence[Any]], dict[str, Any]]
# Metrics that the manifest also records as counts (integers).
COUNT_KEYS = ("train_rows", "eval_rows", "global_step", "scored_pairs")
NODE_RANK = "$SLURM_NODEID"  # expanded by the shell of each srun task


def world_size(cfg: DictConfig) -> int:
    """Training processes over all machines."""
    return int(cfg.launcher.num_processes)


def distributed(cfg: DictConfig) -> bool:
    return world_size(cfg) > 1 or int(cfg.launcher.num_machines) > 1


def accelerate_command(cfg: DictConfig, stage: str, config_file: Path) -> list[str]:
    """The ``accelerate launch`` command line that runs ``stage``'s workers on this machine."""
    lc, section = cfg.launcher, cfg[stage]
    machines = int(lc.num_machines)
    rank = NODE_RANK if lc.srun and machines > 1 else str(lc.machine_rank)
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
        if not lc.main_process_ip:
            raise ValueError(
                "launcher.num_machines > 1 needs launcher.main_process_ip "
                "(the address of machine 0)"
            )
        cmd += [
            "--main_process_ip",
            str(lc.main_process_ip),
            "--main_process_port",
            str(lc.main_process_port),
        ]
    if section.deepspeed:
        ds_file = CONF_DIR / "deepspeed" / f"{section.deepspeed}.json"
        if not ds_file.exists():
            raise FileNotFoundError(f"{stage}.deepspeed={section.deepspeed}: no {ds_file}")
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
    return ["srun", f"--nodes={machines}", "--ntasks-per-node=1", "bash", "-c", inner]


def show(cmd: Sequence[str]) -> str:
    """A command as a shell line (srun's ``bash -c`` argument stays single-quoted)."""
    return shlex.join(cmd)


def worker_config_path(workdir: Path, cfg: DictConfig) -> Path:
    return workdir / "launch" / f"config-machine{int(cfg.launcher.machine_rank)}.yaml"


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
    tmp = path.with_suffix(".tmp")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    os.replace(tmp, path)
    return path


def dry_run_report(cfg: DictConfig, stage: str, workdir: Path) -> str:
    """What the stage would run: the command and the trainer's hyperparameters."""
    if distributed(cfg):
        command = show(launch_command(cfg, stage, worker_config_path(workdir, cfg)))
    else:
        command = "in-process (one process: no launcher)"
    args = trainer_kwargs(cfg[stage], world_size(cfg))
    lines = [
        f"[autorule] dry run of stage {stage} (processes={world_size(cfg)}, "
        f"machines={cfg.launcher.num_machines})",
        command,
        f"[autorule] {stage} trainer arguments:",
    ]
    lines += [f"  {k}={v}" for k, v in args.items()]
    return "\n".join(lines)


def run_training(
    cfg: DictConfig, stage: str, train: TrainFn, callbacks: Sequence[Any] = ()
) -> Path:
    """The body of a training stage's ``run(cfg)``; returns the artifact folder.

    ``callbacks`` (transformers ``TrainerCallback`` objects) reach the trainer only in-process.
    """
    path = artifact_path(cfg, stage)
    input_names = SPECS[stage].inputs_for(cfg)
    if cfg.get("dry_run"):
        print(dry_run_report(cfg, stage, work_path(path)), flush=True)
        return path
    machine0 = int(cfg.launcher.machine_rank) == 0
    if not machine0 and int(cfg.launcher.num_machines) < 2:
        raise ValueError("launcher.machine_rank > 0 needs launcher.num_machines > 1")
    job = StageJob(cfg, stage) if machine0 else None
    if job is not None and job.done:
        return job.path
    if job is not None:
        workdir, inputs = job.workdir, {n: job.input(n) for n in input_names}
    else:  # other machines only start their workers; machine 0 prepares and commits
        workdir, inputs = work_path(path), {n: artifact_path(cfg, n) for n in input_names}

    if not distributed(cfg):
        metrics = train(cfg, workdir, inputs, callbacks)
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
    return job.commit(counts, extra={"metrics": metrics})
