#!/usr/bin/env bash
# A ratings or rankings reward model (stage feedback_rm) on SLURM; needs the feedback artifact
# (python -m autorule stage=feedback ...). Submit from the repository root with your environment
# active; every argument is a Hydra override (hyperparameters live in conf/).
#   sbatch scripts/slurm/feedback_rm.sh profile=paper experiment=feedback_study feedback_rm.protocol=ratings
#   sbatch scripts/slurm/feedback_rm.sh profile=paper experiment=feedback_study feedback_rm.protocol=rankings
#   AUTORULE_DRY_RUN=1 bash scripts/slurm/feedback_rm.sh ...   # print the command and its dry run (common.sh)
#SBATCH --job-name=autorule-feedback-rm
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=12:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

# sbatch runs a copy of this script, so common.sh is found from the submit directory.
source "${AUTORULE_HOME:-${SLURM_SUBMIT_DIR:-.}}/scripts/slurm/common.sh"
autorule_stage feedback_rm "$@"
