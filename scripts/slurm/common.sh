# shellcheck shell=bash
# Shared body of scripts/slurm/<stage>.sh (sourced, not run). Holds no hyperparameters: those come
# from the config (profile, experiment, overrides); this file only describes the allocation.
#
# autorule_stage <stage> [hydra overrides...] runs, on the batch host,
#   python -m autorule stage=<stage> launcher=slurm launcher.num_machines=$SLURM_NNODES \
#       launcher.num_processes=<nodes x GPUs per node> launcher.main_process_ip=<first host> ...
# which composes the config once, prepares the artifact's work folder and starts the GPU workers:
# directly with `accelerate launch` on one node, through `srun` (one launcher per node, machine
# rank $SLURM_NODEID) on several.
#
# AUTORULE_DRY_RUN=1 prints that command instead of running it. To see the accelerate/srun commands
# and the trainer's hyperparameters the stage would then start, append dry_run=true to a real run.
# PYTHON picks the interpreter (default: python on PATH, e.g. your activated environment).

autorule_stage() {
  local stage=$1
  shift
  local nodelist=${SLURM_JOB_NODELIST:?run inside a SLURM allocation (sbatch), or fake SLURM_JOB_NODELIST}
  local -a hosts
  mapfile -t hosts < <(scontrol show hostnames "$nodelist")
  if [[ ${#hosts[@]} -eq 0 ]]; then
    echo "autorule: scontrol found no hosts in SLURM_JOB_NODELIST=$nodelist" >&2
    return 1
  fi
  local nodes=${SLURM_NNODES:-${#hosts[@]}}
  local gpus=${SLURM_GPUS_ON_NODE:-}
  if [[ -z $gpus ]]; then
    gpus=$(nvidia-smi --list-gpus | wc -l)
  fi
  local -a cmd=(
    "${PYTHON:-python}" -m autorule "stage=$stage" launcher=slurm
    "launcher.num_machines=$nodes"
    "launcher.num_processes=$((nodes * gpus))"
    "launcher.machine_rank=${SLURM_NODEID:-0}"
    "launcher.main_process_ip=${hosts[0]}"
    "launcher.main_process_port=${AUTORULE_MASTER_PORT:-29500}"
    "$@"
  )
  if [[ ${AUTORULE_DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    return 0
  fi
  echo "autorule: ${stage} on ${nodes} node(s) x ${gpus} GPU(s), master ${hosts[0]}" >&2
  "${cmd[@]}"
}
