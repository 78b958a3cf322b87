#!/usr/bin/env bash
# GRPO (stage grpo) on SLURM; needs the sft artifact, and the rm and extract artifacts when the
# config's reward terms use them. Every argument is a Hydra override (hyperparameters live in conf/).
#   sbatch scripts/slurm/grpo.sh experiment=autorule_uf            # 4 GPUs train, 4 serve the judge
#   AUTORULE_JUDGE_GPUS=0 sbatch scripts/slurm/grpo.sh experiment=grpo_baseline   # all 8 train
#   AUTORULE_DRY_RUN=1 bash scripts/slurm/grpo.sh experiment=autorule_uf   # print, run nothing
# When the rules term is used and AUTORULE_JUDGE_GPUS > 0 (default 4), the job serves the judge
# model that judge.llm names with `vllm serve` on the node's last AUTORULE_JUDGE_GPUS GPUs (one
# engine per GPU, as the paper's four judge engines), waits until it answers, points judge.llm at
# it and trains on the other GPUs; the server stops when the job ends. One node only.
#SBATCH --job-name=autorule-grpo
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

# sbatch runs a copy of this script, so common.sh is found from the submit directory.
source "${AUTORULE_HOME:-${SLURM_SUBMIT_DIR:-.}}/scripts/slurm/common.sh"
autorule_grpo "$@"
