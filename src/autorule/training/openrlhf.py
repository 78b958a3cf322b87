"""GRPO and PPO on OpenRLHF: the ``ray job submit ... openrlhf.cli.train_ppo_ray`` command.

With ``grpo.engine=openrlhf`` the grpo stage does not train in its own processes: it submits
OpenRLHF's PPO trainer to a Ray cluster (``grpo.openrlhf.ray_address``), which samples with vLLM
engines, trains with DeepSpeed and asks the reward server (``stage=reward_server``) for each
rollout's rewards through ``--remote_rm_url``. The policy lands in the artifact's ``model/``
(``--save_path``), where generate and evaluate read it like a TRL-trained one.

Every flag comes from a config key: the hyperparameters from the ``grpo`` section that the TRL
path reads too (batch sizes, learning rate, KL, sampling, lengths, precision, ZeRO stage), the
rest from ``grpo.openrlhf`` (placement, estimators, offloading). Flags are spelled as in the
OpenRLHF releases the AutoRule scripts ran (0.6 to 0.8: ``--advantage_estimator``,
``--remote_rm_url``, ...); releases from 0.10 on renamed them (``--algo.advantage.estimator``),
so the job's runtime env pins a release of that line (``grpo.openrlhf.runtime_pip``).

OpenRLHF pins its own transformers and DeepSpeed, older than ours, so it is installed in the
Ray job's runtime env rather than beside autorule; this side needs only Ray's job client
(``pip install 'autorule[openrlhf]'``).
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autorule.core.config import ConfigError
from autorule.training.arguments import MODEL

INSTALL = "pip install 'autorule[openrlhf]'"
ENTRY = "openrlhf.cli.train_ppo_ray"
ESTIMATORS = ("group_norm", "gae", "rloo", "reinforce", "reinforce_baseline", "dr_grpo")
CRITIC_INITS = ("rm", "sft")
REWARDS = ("server", "rm")
ZERO_STAGES = {None: 0, "zero2": 2, "zero3": 3}
TENSORBOARD = "tensorboard"  # the folder of the artifact OpenRLHF logs its curves to


def require_ray() -> None:
    """Stops at once, with the install command, when Ray's job client is missing."""
    if shutil.which("ray") is None:
        raise ConfigError(
            "grpo.engine=openrlhf submits a Ray job, and the `ray` command is not installed: "
            f"{INSTALL} (OpenRLHF itself is installed by the job: grpo.openrlhf.runtime_pip)"
        )


def check_numbers(section: Mapping[str, Any]) -> None:
    """Refuses numbers of ``grpo.openrlhf`` that cannot work (checked whatever the engine, as
    every key of grpo), naming the key."""
    from autorule.core.config import check_number

    def number(key: str, **allowed: Any) -> None:
        if key in section:
            check_number(section[key], f"grpo.openrlhf.{key}", **allowed)

    for key in (
        "reward_num_gpus_per_node",
        "micro_rollout_batch_size",
        "prompt_max_len",
        "max_samples",
        "vllm_tensor_parallel_size",
        "actor_num_nodes",
        "actor_num_gpus_per_node",
        "ref_num_nodes",
        "ref_num_gpus_per_node",
        "critic_num_nodes",
        "critic_num_gpus_per_node",
    ):
        number(key, low=1)
    number("vllm_num_engines", low=0)
    number("critic_learning_rate", integer=False, low=0, low_open=True)
    number("lambd", integer=False, low=0, high=1)
    number("gamma", integer=False, low=0, high=1)


def uses_critic(section: Mapping[str, Any]) -> bool:
    """Whether the run trains a critic (PPO's GAE)."""
    return str(section["openrlhf"]["advantage_estimator"]) == "gae"


def served_reward(section: Mapping[str, Any]) -> bool:
    """Whether the reward server scores (else OpenRLHF's reward model actor on the rm model)."""
    return str(section["openrlhf"]["reward"]) == "server"


def _flag(name: str, value: Any) -> list[str]:
    """``--name value``; a bool is a switch (present when true); None leaves the flag out."""
    if value is None or value is False:
        return []
    if value is True:
        return [f"--{name}"]
    if isinstance(value, (list, tuple)):
        return [f"--{name}", *(str(v) for v in value)]
    return [f"--{name}", str(value)]


def train_args(
    cfg: DictConfig, workdir: Path, inputs: Mapping[str, Path], reward_url: str
) -> list[str]:
    """The arguments of ``python -m openrlhf.cli.train_ppo_ray`` for this config."""
    section, engine = cfg.grpo, cfg.grpo.openrlhf
    if section.deepspeed not in ZERO_STAGES:
        raise ConfigError(f"grpo.deepspeed={section.deepspeed}: one of {list(ZERO_STAGES)}")
    critic = uses_critic(section)
    critic_model = None
    if critic:
        critic_model = inputs["rm"] if engine.critic_init == "rm" else inputs["sft"]
        critic_model = str(Path(critic_model) / MODEL)
    prompts = Path(inputs["preprocess"]) / f"{section.prompt_split}.parquet"
    served = served_reward(section)
    local_rm = None if served else str(Path(inputs["rm"]) / MODEL)
    pairs: list[tuple[str, Any]] = [
        # Placement: Ray actors per role (the paper: 1 GPU each for GRPO, 2 each for PPO).
        ("actor_num_nodes", engine.actor_num_nodes),
        ("actor_num_gpus_per_node", engine.actor_num_gpus_per_node),
        ("ref_num_nodes", engine.ref_num_nodes),
        ("ref_num_gpus_per_node", engine.ref_num_gpus_per_node),
        ("critic_num_nodes", engine.critic_num_nodes if critic else None),
        ("critic_num_gpus_per_node", engine.critic_num_gpus_per_node if critic else None),
        ("vllm_num_engines", engine.vllm_num_engines),
        ("vllm_tensor_parallel_size", engine.vllm_tensor_parallel_size),
        ("vllm_sync_backend", engine.vllm_sync_backend),
        ("reward_num_nodes", None if served else 1),
        ("reward_num_gpus_per_node", None if served else engine.reward_num_gpus_per_node),
        ("colocate_actor_ref", bool(engine.colocate_actor_ref)),
        # Models: the policy from sft, the critic (PPO) from the rm or sft artifact, the
        # reward from the reward server.
        ("pretrain", str(Path(inputs["sft"]) / MODEL)),
        ("critic_pretrain", critic_model),
        ("remote_rm_url", reward_url if served else None),
        ("reward_pretrain", local_rm),
        ("save_path", str(workdir / MODEL)),
        ("ckpt_path", str(workdir / "checkpoints")),
        # OpenRLHF's own curves (KL, losses, lengths, its reward) land in the artifact; the
        # per-term curves come from the reward server's log (autorule.rewards.score_log).
        ("use_tensorboard", str(workdir / TENSORBOARD)),
        ("save_steps", section.save_steps),
        ("max_ckpt_num", section.save_total_limit),
        ("load_checkpoint", True),  # resumes from ckpt_path when a checkpoint is there
        # Data: the preprocess split's formatted prompts, already in the policy's template.
        ("prompt_data", str(prompts)),
        ("input_key", "formatted_prompt"),
        ("max_samples", section.max_prompts or engine.max_samples),
        # Batches and lengths.
        ("n_samples_per_prompt", section.num_generations),
        ("rollout_batch_size", section.prompts_per_rollout),
        ("micro_rollout_batch_size", engine.micro_rollout_batch_size),
        ("train_batch_size", section.global_batch_size),
        ("micro_train_batch_size", section.micro_batch_size),
        ("max_epochs", section.num_iterations),
        ("num_episodes", section.num_train_epochs),
        ("prompt_max_len", engine.prompt_max_len),
        ("generate_max_len", section.max_completion_length),
        ("temperature", section.temperature),
        ("top_p", section.top_p),
        # The algorithm.
        ("advantage_estimator", engine.advantage_estimator),
        ("gamma", engine.gamma),
        ("lambd", engine.lambd if critic else None),
        ("eps_clip", section.clip_range),
        ("init_kl_coef", section.kl_coef),
        ("use_kl_loss", bool(engine.use_kl_loss)),
        ("kl_estimator", engine.kl_estimator),
        # The optimiser.
        ("actor_learning_rate", section.learning_rate),
        ("critic_learning_rate", engine.critic_learning_rate if critic else None),
        ("lr_warmup_ratio", section.warmup_ratio),
        ("max_norm", section.max_grad_norm),
        ("adam_betas", [section.adam_beta1, section.adam_beta2]),
        ("l2", section.weight_decay or None),
        ("seed", section.seed),
        # Memory and speed.
        ("zero_stage", ZERO_STAGES[section.deepspeed]),
        ("bf16", section.precision == "bf16"),
        ("normalize_reward", bool(engine.normalize_reward)),
        ("packing_samples", bool(engine.packing_samples)),
        ("gradient_checkpointing", bool(section.gradient_checkpointing)),
        ("flash_attn", bool(engine.flash_attn)),
        ("adam_offload", bool(engine.adam_offload)),
        ("ref_reward_offload", bool(engine.ref_reward_offload)),
    ]
    args = [token for name, value in pairs for token in _flag(name, value)]
    return args + [str(a) for a in engine.extra_args or []]


def submit_command(
    cfg: DictConfig, workdir: Path, inputs: Mapping[str, Path], reward_url: str
) -> list[str]:
    """``ray job submit --address ... --runtime-env-json ... -- python3 -m ...train_ppo_ray``."""
    engine = cfg.grpo.openrlhf
    runtime = {"pip": list(OmegaConf.to_container(engine.runtime_pip, resolve=True) or [])}
    return [
        "ray",
        "job",
        "submit",
        "--address",
        str(engine.ray_address),
        "--runtime-env-json",
        json.dumps(runtime),
        "--",
        "python3",
        "-m",
        ENTRY,
        *train_args(cfg, workdir, inputs, reward_url),
    ]


def show(cmd: list[str]) -> str:
    """The command as a shell line, each flag on a line of its own."""
    words = [
        (" \\\n    " if word.startswith("--") and word != "--" else " ") + shlex.quote(word)
        for word in cmd
    ]
    return "".join(words).lstrip()


def dry_run_report(cfg: DictConfig, cmd: list[str], inputs: Mapping[str, str], url: str) -> str:
    """What ``stage=grpo grpo.engine=openrlhf`` would submit."""
    section = cfg.grpo
    kind = "PPO (GAE, critic)" if uses_critic(section) else "GRPO (group-normalised rewards)"
    source = f"the reward server at {url}" if served_reward(section) else "OpenRLHF's reward actor"
    lines = [
        f"[autorule] dry run of stage grpo on OpenRLHF: {kind}, rewards "
        f"{', '.join(section.rewards)} from {source}",
        show(cmd),
        *(f"  input {name} -> {state}" for name, state in inputs.items()),
    ]
    if served_reward(section):
        lines.append(
            "  the reward server must be up first: python -m autorule stage=reward_server "
            "(same overrides); scripts/slurm/openrlhf.sh starts both"
        )
    return "\n".join(lines)
