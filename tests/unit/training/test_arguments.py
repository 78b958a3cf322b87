"""Trainer arguments, tracker names and the training stages' artifact identity."""

import pytest

from autorule.core.artifacts import config_hash
from autorule.core.config import compose
from autorule.core.stage import get_spec
from autorule.training.arguments import (
    checkpoint_step,
    grad_accumulation,
    logging_kwargs,
    run_name,
    sequence_kwargs,
    trainer_kwargs,
)


@pytest.mark.parametrize("world, expected", [(1, 128), (8, 16), (16, 8)])
def test_grad_accumulation_keeps_the_global_batch(world, expected):
    assert grad_accumulation(256, 2, world) == expected


def test_grad_accumulation_refuses_an_uneven_split():
    with pytest.raises(ValueError, match="not divisible.*micro_batch_size=2 x processes=3"):
        grad_accumulation(256, 2, 3)


def test_paper_profile_gives_the_released_hyperparameters():
    cfg = compose(["stage=sft", "profile=paper"])
    sft = trainer_kwargs(cfg.sft, 8, sequence_kwargs)
    assert sft["learning_rate"] == 5e-6 and sft["lr_scheduler_type"] == "constant_with_warmup"
    assert sft["warmup_steps"] == 0.05 and sft["max_grad_norm"] == 10.0
    assert sft["num_train_epochs"] == 2 and sft["max_length"] == 2048 and sft["bf16"]
    assert sft["per_device_train_batch_size"] == 2 and sft["gradient_accumulation_steps"] == 16
    rm = trainer_kwargs(cfg.rm, 8, get_spec("rm").trainer_args)
    assert rm["learning_rate"] == 5e-6 and rm["warmup_steps"] == 0.1 and rm["max_length"] == 2048
    assert rm["max_grad_norm"] == 5.0 and rm["num_train_epochs"] == 1
    assert cfg.sft.deepspeed == "zero2" and cfg.rm.deepspeed == "zero3" and cfg.rm.init == "sft"
    # The released scripts (OpenRLHF) use Adam betas (0.9, 0.95) and seed 42.
    for args in (sft, rm):
        assert (args["adam_beta1"], args["adam_beta2"]) == (0.9, 0.95) and args["seed"] == 42
    assert cfg.seed == 42


def test_default_optimizer_is_transformers_adamw():
    cfg = compose(["stage=sft"])
    args = trainer_kwargs(cfg.sft, 1)
    assert (args["adam_beta1"], args["adam_beta2"], args["adam_epsilon"]) == (0.9, 0.999, 1e-8)
    assert args["weight_decay"] == 0.0 and "max_length" not in args  # the trainer adds its own
    assert cfg.seed == 0


def test_tiny_profile_trains_in_fp32_without_a_tracker():
    cfg = compose(["stage=sft"])
    assert not trainer_kwargs(cfg.sft, 1)["bf16"]
    assert logging_kwargs(cfg.logger, "sft", [], "default")[0]["report_to"] == []


def test_wandb_names_come_from_the_overrides_and_the_experiment_name():
    cfg = compose(["stage=rm", "logger=wandb", "experiment_name=uf_paper"])
    overrides = [
        "stage=pipeline",
        "experiment=autorule_uf",
        "pipeline.stages=[sft,rm]",
        "rm.learning_rate=1e-5",
        "paths.root=/x",
        "launcher.num_processes=8",
    ]
    kwargs, env = logging_kwargs(cfg.logger, "rm", overrides, cfg.experiment_name)
    assert kwargs == {
        "report_to": ["wandb"],
        "run_name": "rm experiment=autorule_uf rm.learning_rate=1e-5",
    }
    assert env == {"WANDB_PROJECT": "autorule", "WANDB_RUN_GROUP": "uf_paper"}


def test_wandb_group_is_logger_group_else_experiment_name():
    def group(*overrides):
        cfg = compose(["stage=sft", "logger=wandb", *overrides])
        return logging_kwargs(cfg.logger, "sft", [], cfg.experiment_name)[1]["WANDB_RUN_GROUP"]

    assert group("experiment_name=ablation-3") == "ablation-3"
    assert group("experiment_name=ablation-3", "logger.group=mine") == "mine"
    assert group() == "default"


def test_an_experiment_file_names_the_wandb_group():
    cfg = compose(["stage=sft", "logger=wandb", "experiment=autorule_uf"])
    assert logging_kwargs(cfg.logger, "sft", [], cfg.experiment_name)[1]["WANDB_RUN_GROUP"] == (
        "autorule_uf"
    )
    # The command line still wins over the experiment file.
    cfg = compose(["stage=sft", "experiment=autorule_uf", "experiment_name=mine"])
    assert cfg.experiment_name == "mine"


def test_run_name_keeps_no_paths_nor_the_pipeline_selection():
    overrides = ["paths.root=/scratch/me", "force=true", "pipeline.stages=[sft,rm]", "seed=1"]
    assert run_name("sft", overrides) == "sft seed=1"


def test_checkpoint_step():
    assert checkpoint_step("/w/checkpoints/checkpoint-40") == 40
    assert checkpoint_step(None) is None
    with pytest.raises(ValueError):
        checkpoint_step("/w/checkpoints/last")


def test_rm_reads_and_hashes_sft_only_when_initialised_from_it():
    assert get_spec("rm").inputs_for(compose(["stage=rm"])) == ("preprocess", "sft")
    assert get_spec("rm").inputs_for(compose(["stage=rm", "rm.init=base"])) == ("preprocess",)
    from_sft = [
        config_hash(compose(["stage=rm", f"sft.learning_rate={lr}"]), "rm") for lr in (1e-3, 2e-3)
    ]
    from_base = [
        config_hash(compose(["stage=rm", "rm.init=base", f"sft.learning_rate={lr}"]), "rm")
        for lr in (1e-3, 2e-3)
    ]
    assert from_sft[0] != from_sft[1]
    assert from_base[0] == from_base[1]


def test_runtime_keys_do_not_change_the_artifact():
    base = config_hash(compose(["stage=sft"]), "sft")
    assert (
        config_hash(compose(["stage=sft", "sft.micro_batch_size=4", "sft.logging_steps=7"]), "sft")
        == base
    )
    assert config_hash(compose(["stage=sft", "sft.learning_rate=1e-4"]), "sft") != base
