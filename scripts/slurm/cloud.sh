#!/usr/bin/env bash
# CLoud reward-model training (stage cloud) on SLURM: critique SFT, self-critiques and the reward
# phase in one allocation; needs the critiques artifact (cloud.mode=cloud) or only preprocess
# (cloud.mode=classic). Submit from the repository root with your environment active; every
# argument is a Hydra override (hyperparameters live in conf/).
#   sbatch scripts/slurm/cloud.sh experiment=cloud_uf
#   sbatch scripts/slurm/cloud.sh experiment=classic_uf              # the classic baseline
#   AUTORULE_DRY_RUN=1 bash scripts/slurm/cloud.sh experiment=cloud_uf   # print the command and its dry run (common.sh)
#SBATCH --job-name=autorule-cloud
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

# sbatch runs a copy of this script, so common.sh is found from the submit directory.
source "${AUTORULE_HOME:-${SLURM_SUBMIT_DIR:-.}}/scripts/slurm/common.sh"
autorule_stage cloud "$@"
