#!/usr/bin/env bash
# GRPO or PPO on OpenRLHF (stage grpo with grpo.engine=openrlhf) on SLURM. Every argument is a Hydra
# override (hyperparameters live in conf/). Needs the sft artifact (and rm, extract as the reward
# terms use them; rm for the PPO critic).
#   sbatch scripts/slurm/openrlhf.sh experiment=autorule_uf        # GRPO + rules on 1 node x 8 GPUs
#   sbatch --nodes=2 scripts/slurm/openrlhf.sh experiment=ppo_baseline
#   AUTORULE_DRY_RUN=1 SLURM_JOB_NODELIST='gpu-a[01-02]' bash scripts/slurm/openrlhf.sh experiment=ppo_baseline
# The first node runs the Ray head (on its first GPUs), the reward server (stage reward_server, on
# AUTORULE_REWARD_GPUS GPUs, default 1) and, when the rules term is used, the judge that judge.llm
# names with `vllm serve` (on the last AUTORULE_JUDGE_GPUS, default 4), as grpo.sh does; every other
# node runs a Ray worker. stage grpo then submits OpenRLHF's train_ppo_ray to the head and waits;
# the servers and Ray stop when the job ends. The Ray job installs OpenRLHF itself
# (grpo.openrlhf.runtime_pip); this environment needs `pip install 'autorule[openrlhf]'`.
#SBATCH --job-name=autorule-openrlhf
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

# sbatch runs a copy of this script, so common.sh is found from the submit directory.
source "${AUTORULE_HOME:-${SLURM_SUBMIT_DIR:-.}}/scripts/slurm/common.sh"
autorule_openrlhf "$@"
