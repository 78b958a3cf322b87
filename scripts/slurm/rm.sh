#!/usr/bin/env bash
# Reward-model training (stage rm) on SLURM; needs the sft artifact unless rm.init=base.
# Submit from the repository root with your environment active; every argument is a Hydra
# override (hyperparameters live in conf/).
#   sbatch scripts/slurm/rm.sh profile=paper
#   sbatch --nodes=2 scripts/slurm/rm.sh profile=paper    # 16 GPUs; the global batch is unchanged
#   AUTORULE_DRY_RUN=1 bash scripts/slurm/rm.sh ...        # print the command and its dry run (common.sh)
#SBATCH --job-name=autorule-rm
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

# sbatch runs a copy of this script, so common.sh is found from the submit directory.
source "${AUTORULE_HOME:-${SLURM_SUBMIT_DIR:-.}}/scripts/slurm/common.sh"
autorule_stage rm "$@"
