"""The CLoud experiments pin the CLoud paper's 8B settings; each phase gets its own trainer
settings; the classic baseline gets the classic ones."""

import pytest

from autorule.stages.cloud import CRITIQUE_SFT, phase_section
from autorule.training.arguments import trainer_kwargs


def test_cloud_uf_pins_the_papers_8b_settings(make_cfg):
    cfg = make_cfg("experiment=cloud_uf")
    c = cfg.cloud
    assert cfg.profile.name == "paper" and c.mode == "cloud" and c.self_critiques
    assert list(cfg.pipeline.stages) == ["preprocess", "critiques", "cloud", "cloud_eval"]
    # The reward phase (8b_cloud.yaml) and the loss weight lambda.
    reward = trainer_kwargs(phase_section(cfg, "reward"), 8)
    assert c.lm_weight == 1.25 and c.max_length == 2048 and c.seed == 17
    assert reward["learning_rate"] == 1e-6 and reward["weight_decay"] == 1e-6
    assert (reward["adam_beta1"], reward["adam_beta2"], reward["adam_epsilon"]) == (
        0.9,
        0.95,
        1e-10,
    )
    assert reward["lr_scheduler_type"] == "cosine_with_min_lr" and reward["warmup_steps"] == 0.1
    assert c.lr_scheduler_kwargs.min_lr_rate == 0.01 and reward["max_grad_norm"] == 1.0
    assert reward["num_train_epochs"] == 1 and c.global_batch_size == 96
    assert reward["bf16"] and reward["gradient_checkpointing"]
    # Phase 1 (8b_critique_sft.yaml) over the same batch, schedule and optimizer.
    sft = trainer_kwargs(phase_section(cfg, CRITIQUE_SFT), 8)
    assert sft["learning_rate"] == 5e-6 and sft["weight_decay"] == 5e-6
    assert sft["num_train_epochs"] == 1 and sft["adam_beta2"] == 0.95
    assert sft["gradient_accumulation_steps"] == reward["gradient_accumulation_steps"] == 6
    # Phase 2 and inference: greedy critiques of up to 1,024 tokens (penalty 1.01 at inference).
    assert c.generation.max_new_tokens == 1024 and c.generation.repetition_penalty == 1.0
    e = cfg.cloud_eval
    assert (e.max_new_tokens, e.repetition_penalty) == (1024, 1.01)
    assert e.rewardbench.path == "allenai/reward-bench" and e.rewardbench.split == "filtered"
    # The oracle: Llama-3.1-405B-Instruct, greedy, 2,048 tokens, on an OpenAI-compatible server.
    judge = cfg.critique.llm
    assert judge._target_.endswith("OpenAICompatLLM") and "405B" in judge.model
    assert (judge.temperature, judge.max_tokens) == (0.0, 2048)


def test_classic_uf_trains_the_classic_baseline(make_cfg):
    cfg = make_cfg("experiment=classic_uf")
    assert cfg.cloud.mode == "classic"
    assert list(cfg.pipeline.stages) == ["preprocess", "cloud", "cloud_eval"]
    reward = trainer_kwargs(phase_section(cfg, "reward"), 8)
    # 8b_classic.yaml: lr 5e-6, weight decay 5e-6, 2 epochs; the rest as the CLoud reward phase.
    assert (reward["learning_rate"], reward["weight_decay"], reward["num_train_epochs"]) == (
        5e-6,
        5e-6,
        2,
    )
    assert reward["adam_epsilon"] == 1e-10 and reward["max_grad_norm"] == 1.0


@pytest.mark.parametrize("experiment", ["cloud_uf", "classic_uf"])
def test_the_experiments_run_tiny_on_the_command_line(make_cfg, experiment):
    cfg = make_cfg(f"experiment={experiment}", "profile=tiny")
    assert cfg.profile.name == "tiny" and cfg.model.name_or_path == "tiny"
    assert cfg.critique.llm._target_.endswith("HFLLM")
    assert phase_section(cfg, "reward")["max_steps"] == 16
    assert phase_section(cfg, CRITIQUE_SFT)["max_steps"] == 4
