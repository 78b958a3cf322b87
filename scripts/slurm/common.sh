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
# AUTORULE_DRY_RUN=1 prints that command, then runs it with dry_run=true, which prints the
# accelerate/srun command and the trainer's hyperparameters and writes nothing. It also works off
# the cluster with a faked allocation, e.g.
#   AUTORULE_DRY_RUN=1 SLURM_JOB_NODELIST='gpu-a[01-02]' bash scripts/slurm/sft.sh profile=paper
# where, without scontrol, a simple expansion reads the node list and, without SLURM_GPUS_ON_NODE
# and nvidia-smi, 8 GPUs per node are assumed.
# PYTHON picks the interpreter (default: python on PATH, e.g. your activated environment).

# The #SBATCH --gpus-per-node of scripts/slurm/<stage>.sh: what a dry run off the cluster assumes.
AUTORULE_DRY_RUN_GPUS=8

# autorule_hostnames <nodelist>: one host name a line, like `scontrol show hostnames`, for dry runs
# off the cluster only. Handles comma lists and bracket ranges: 'gpu-a[01-02,07],cpu1' gives
# gpu-a01 gpu-a02 gpu-a07 cpu1 (numbers keep the width of the range's first bound, as in SLURM).
autorule_hostnames() {
  local list=$1 item part cur="" ch i n lo hi
  local depth=0
  local -a items=() parts=()
  local re='^([^][]*)\[([^][]*)\](.*)$'
  for ((i = 0; i < ${#list}; i++)); do  # split at the commas outside brackets
    ch=${list:i:1}
    case $ch in
      '[') depth=$((depth + 1)) ;;
      ']') depth=$((depth - 1)) ;;
    esac
    if [[ $ch == , && $depth -eq 0 ]]; then
      items+=("$cur")
      cur=""
    else
      cur+=$ch
    fi
  done
  items+=("$cur")
  for item in "${items[@]}"; do
    if [[ $item =~ $re ]]; then
      local prefix=${BASH_REMATCH[1]} suffix=${BASH_REMATCH[3]}
      IFS=, read -ra parts <<<"${BASH_REMATCH[2]}"
      for part in "${parts[@]}"; do
        if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
          lo=${BASH_REMATCH[1]}
          hi=${BASH_REMATCH[2]}
          for ((n = 10#$lo; n <= 10#$hi; n++)); do
            autorule_hostnames "$(printf '%s%0*d%s' "$prefix" "${#lo}" "$n" "$suffix")"
          done
        else
          autorule_hostnames "$prefix$part$suffix"  # the suffix may hold another range
        fi
      done
    elif [[ -n $item ]]; then
      printf '%s\n' "$item"
    fi
  done
}

# autorule_hosts <nodelist>: the allocation's host names, one a line (scontrol, or in a dry run
# off the cluster the expansion above).
autorule_hosts() {
  if command -v scontrol >/dev/null; then
    scontrol show hostnames "$1"
  elif [[ ${AUTORULE_DRY_RUN:-0} == 1 ]]; then
    autorule_hostnames "$1"
  else
    echo "autorule: scontrol not found: run inside a SLURM allocation (or set AUTORULE_DRY_RUN=1)" >&2
    return 1
  fi
}

autorule_stage() {
  local stage=$1
  shift
  local nodelist=${SLURM_JOB_NODELIST:?run inside a SLURM allocation (sbatch), or fake SLURM_JOB_NODELIST}
  local dry_run=${AUTORULE_DRY_RUN:-0}
  local -a hosts
  mapfile -t hosts < <(autorule_hosts "$nodelist")
  if [[ ${#hosts[@]} -eq 0 ]]; then
    echo "autorule: no hosts in SLURM_JOB_NODELIST=$nodelist" >&2
    return 1
  fi
  local nodes=${SLURM_NNODES:-${#hosts[@]}}
  local gpus=${SLURM_GPUS_ON_NODE:-}
  if [[ -z $gpus ]] && command -v nvidia-smi >/dev/null; then
    gpus=$(nvidia-smi --list-gpus | wc -l)
  fi
  if [[ -z $gpus && $dry_run == 1 ]]; then
    gpus=$AUTORULE_DRY_RUN_GPUS
    echo "autorule: dry run: no SLURM_GPUS_ON_NODE nor nvidia-smi; assuming $gpus GPUs per node" >&2
  elif [[ -z $gpus ]]; then
    echo "autorule: cannot count the GPUs: SLURM_GPUS_ON_NODE is unset and nvidia-smi is missing" >&2
    return 1
  fi
  local -a cmd=(
    "${PYTHON:-python}" -m autorule "stage=$stage" launcher=slurm
    "launcher.num_machines=$nodes"
    "launcher.num_processes=$((nodes * gpus))"
    "launcher.machine_rank=${SLURM_NODEID:-0}"
    "launcher.main_process_ip=${hosts[0]}"
    "launcher.main_process_port=${AUTORULE_MASTER_PORT:-29500}"
  )
  # srun >= 22.05 no longer inherits sbatch's --cpus-per-task: pass it on to the per-node tasks.
  if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
    cmd+=("launcher.cpus_per_task=$SLURM_CPUS_PER_TASK")
  fi
  cmd+=("$@")
  if [[ $dry_run == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    "${cmd[@]}" dry_run=true
    return
  fi
  echo "autorule: ${stage} on ${nodes} node(s) x ${gpus} GPU(s), master ${hosts[0]}" >&2
  "${cmd[@]}"
}

# autorule_config_value <dotted.key> [overrides...]: one value of the composed config.
autorule_config_value() {
  "${PYTHON:-python}" -m autorule.core.config "$@"
}

# autorule_grpo [overrides...]: stage grpo, serving the rule judge on GPUs of its own when the
# config's reward terms include `rules` and AUTORULE_JUDGE_GPUS > 0 (see scripts/slurm/grpo.sh).
autorule_grpo() {
  local judge_gpus=${AUTORULE_JUDGE_GPUS:-4}
  local dry_run=${AUTORULE_DRY_RUN:-0}
  local rewards
  rewards=$(autorule_config_value grpo.rewards stage=grpo "$@")
  if [[ $judge_gpus -le 0 || $rewards != *"- rules"* ]]; then
    autorule_stage grpo "$@"
    return
  fi
  local total=${SLURM_GPUS_ON_NODE:-}
  if [[ -z $total ]] && command -v nvidia-smi >/dev/null; then
    total=$(nvidia-smi --list-gpus | wc -l)
  fi
  total=${total:-$AUTORULE_DRY_RUN_GPUS}
  if [[ $judge_gpus -ge $total ]]; then
    echo "autorule: AUTORULE_JUDGE_GPUS=$judge_gpus leaves none of the node's $total GPUs to train" >&2
    return 1
  fi
  local train_gpus=$((total - judge_gpus))
  local model port host
  model=$(autorule_config_value judge.llm.model stage=grpo "$@")
  port=${AUTORULE_JUDGE_PORT:-8001}
  host=$(hostname)
  local -a serve=(
    vllm serve "$model" --served-model-name "$model" --port "$port"
    --data-parallel-size "$judge_gpus" --enable-prefix-caching
  )
  local -a judge=(
    "llm@judge.llm=openai" "judge.llm.model=$model" "judge.llm.base_url=http://$host:$port/v1"
  )
  if [[ $dry_run == 1 ]]; then
    printf 'CUDA_VISIBLE_DEVICES=%s ' "$(seq -s, "$train_gpus" $((total - 1)))"
    printf '%q ' "${serve[@]}"
    printf '&\n'
    SLURM_GPUS_ON_NODE=$train_gpus autorule_stage grpo "$@" "${judge[@]}"
    return
  fi
  CUDA_VISIBLE_DEVICES=$(seq -s, "$train_gpus" $((total - 1))) "${serve[@]}" &
  local server=$!
  # shellcheck disable=SC2064  # the pid is fixed now
  trap "kill $server 2>/dev/null || true" EXIT
  autorule_wait_for "http://127.0.0.1:$port/v1/models" "the judge server (vllm serve $model)" \
    "$server" "${AUTORULE_JUDGE_TIMEOUT:-1800}" AUTORULE_JUDGE_TIMEOUT
  echo "autorule: judge $model served on $host:$port (GPUs $train_gpus-$((total - 1)))" >&2
  CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((train_gpus - 1))) SLURM_GPUS_ON_NODE=$train_gpus \
    autorule_stage grpo "$@" "${judge[@]}"
}

# autorule_wait_for <url> <what> <pid> <seconds> <variable>: polls the URL until it answers;
# fails when the process exits first or the seconds pass (<variable> names the setting).
autorule_wait_for() {
  local url=$1 what=$2 pid=$3 limit=$4 setting=$5 waited=0
  until curl -sf "$url" >/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "autorule: $what exited before answering" >&2
      return 1
    fi
    if [[ $waited -ge $limit ]]; then
      echo "autorule: $what did not answer within ${limit}s ($setting)" >&2
      return 1
    fi
    sleep 10
    waited=$((waited + 10))
  done
}

# autorule_openrlhf [overrides...]: grpo.engine=openrlhf on the allocation (scripts/slurm/openrlhf.sh).
# On the first node: the Ray head (its first GPUs), the reward server (AUTORULE_REWARD_GPUS, for
# the rm term's model) and, when the rules term is used, the judge served by vLLM (the last
# AUTORULE_JUDGE_GPUS); on every other node a Ray worker with all its GPUs. Then stage grpo submits
# the OpenRLHF job to the head and waits for it; everything stops when the script ends.
autorule_openrlhf() {
  local dry_run=${AUTORULE_DRY_RUN:-0}
  local nodelist=${SLURM_JOB_NODELIST:?run inside a SLURM allocation (sbatch), or fake SLURM_JOB_NODELIST}
  local -a hosts
  mapfile -t hosts < <(autorule_hosts "$nodelist")
  if [[ ${#hosts[@]} -eq 0 ]]; then
    echo "autorule: no hosts in SLURM_JOB_NODELIST=$nodelist" >&2
    return 1
  fi
  local head=${hosts[0]}
  local gpus=${SLURM_GPUS_ON_NODE:-}
  if [[ -z $gpus ]] && command -v nvidia-smi >/dev/null; then
    gpus=$(nvidia-smi --list-gpus | wc -l)
  fi
  gpus=${gpus:-$AUTORULE_DRY_RUN_GPUS}
  local ray_port=${AUTORULE_RAY_PORT:-6379} rm_port=${AUTORULE_REWARD_PORT:-5000}
  local judge_port=${AUTORULE_JUDGE_PORT:-8001}
  local reward_gpus=${AUTORULE_REWARD_GPUS:-1} judge_gpus=${AUTORULE_JUDGE_GPUS:-4}
  local rewards
  rewards=$(autorule_config_value grpo.rewards stage=grpo "$@")
  if [[ $rewards != *"- rules"* ]]; then
    judge_gpus=0
  fi
  local ray_gpus=$((gpus - reward_gpus - judge_gpus))
  if [[ $ray_gpus -le 0 ]]; then
    echo "autorule: $gpus GPUs on $head leave none to Ray after AUTORULE_REWARD_GPUS=$reward_gpus" \
      "and AUTORULE_JUDGE_GPUS=$judge_gpus" >&2
    return 1
  fi
  local -a judge=() serve=()
  if [[ $judge_gpus -gt 0 ]]; then
    local model
    model=$(autorule_config_value judge.llm.model stage=grpo "$@")
    serve=(vllm serve "$model" --served-model-name "$model" --port "$judge_port"
      --data-parallel-size "$judge_gpus" --enable-prefix-caching)
    judge=("llm@judge.llm=openai" "judge.llm.model=$model" "judge.llm.base_url=http://$head:$judge_port/v1")
  fi
  local -a common=(
    "reward_server.advertise_host=$head" "reward_server.port=$rm_port" "grpo.engine=openrlhf"
  )
  local -a head_cmd=(srun --overlap --nodes=1 --ntasks=1 -w "$head" ray start --head
    "--node-ip-address=$head" "--port=$ray_port" "--num-gpus=$ray_gpus" --dashboard-host=0.0.0.0 --block)
  local -a server=("${PYTHON:-python}" -m autorule stage=reward_server "${common[@]}" "${judge[@]}" "$@")
  local -a submit=("${PYTHON:-python}" -m autorule stage=grpo "${common[@]}"
    "grpo.openrlhf.ray_address=http://127.0.0.1:8265" "${judge[@]}" "$@")
  local reward_devices judge_devices
  reward_devices=$(seq -s, "$ray_gpus" $((ray_gpus + reward_gpus - 1)))
  judge_devices=$(seq -s, $((ray_gpus + reward_gpus)) $((gpus - 1)))
  if [[ $dry_run == 1 ]]; then
    printf 'CUDA_VISIBLE_DEVICES=%s ' "$(seq -s, 0 $((ray_gpus - 1)))"
    printf '%q ' "${head_cmd[@]}"
    printf '&\n'
    local host
    for host in "${hosts[@]:1}"; do
      printf '%q ' srun --overlap --nodes=1 --ntasks=1 -w "$host" ray start \
        "--address=$head:$ray_port" "--num-gpus=$gpus" --block
      printf '&\n'
    done
    if [[ $judge_gpus -gt 0 ]]; then
      printf 'CUDA_VISIBLE_DEVICES=%s ' "$judge_devices"
      printf '%q ' "${serve[@]}"
      printf '&\n'
    fi
    printf 'CUDA_VISIBLE_DEVICES=%s ' "$reward_devices"
    printf '%q ' "${server[@]}"
    printf '&\n'
    printf '%q ' "${submit[@]}"
    printf '\n'
    "${submit[@]}" dry_run=true
    return
  fi
  local -a pids=()
  # shellcheck disable=SC2064  # the pids are fixed when the trap runs
  trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
  CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((ray_gpus - 1))) "${head_cmd[@]}" &
  pids+=($!)
  sleep "${AUTORULE_RAY_WAIT:-30}"
  for host in "${hosts[@]:1}"; do
    srun --overlap --nodes=1 --ntasks=1 -w "$host" ray start "--address=$head:$ray_port" \
      "--num-gpus=$gpus" --block &
    pids+=($!)
  done
  if [[ $judge_gpus -gt 0 ]]; then
    CUDA_VISIBLE_DEVICES=$judge_devices "${serve[@]}" &
    pids+=($!)
    autorule_wait_for "http://127.0.0.1:$judge_port/v1/models" "the judge server (vllm serve)" \
      "${pids[-1]}" "${AUTORULE_JUDGE_TIMEOUT:-1800}" AUTORULE_JUDGE_TIMEOUT
  fi
  CUDA_VISIBLE_DEVICES=$reward_devices "${server[@]}" &
  pids+=($!)
  autorule_wait_for "http://127.0.0.1:$rm_port/health" "the reward server" "${pids[-1]}" \
    "${AUTORULE_SERVE_TIMEOUT:-1800}" AUTORULE_SERVE_TIMEOUT
  echo "autorule: Ray head $head (+${#hosts[@]} node(s)), reward server http://$head:$rm_port" >&2
  "${submit[@]}"
}
