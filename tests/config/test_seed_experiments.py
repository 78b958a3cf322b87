"""The seed experiments' paper runs: cloud_paper, feedback_paper and rubric_prometheus compose
with the papers' data and settings, and their dry runs print them."""

import pytest

from autorule.core.config import compose
from autorule.pipeline import run_stage


def paper(experiment, *overrides):
    return compose(["stage=pipeline", f"experiment={experiment}", "logger=none", *overrides])


def test_cloud_paper_labels_sampled_pairs_of_cloud_prompts_with_the_oracle():
    cfg = paper("cloud_paper")
    assert cfg.profile.name == "paper"
    assert list(cfg.pipeline.stages) == ["preprocess", "oracle", "critiques", "cloud", "cloud_eval"]
    assert cfg.oracle.dataset == "cloud_prompts" and cfg.oracle.responses_per_prompt == 2
    assert cfg.oracle.llm.model == "meta-llama/Llama-3.1-405B-Instruct-FP8"
    assert cfg.critique.pairs == "oracle" and cfg.cloud.mode == "cloud"
    prompts = compose(["dataset=cloud_prompts", "profile=paper"]).dataset
    assert set(prompts.sources) == {"ultrafeedback", "ultrainteract"}
    assert prompts.path is None  # every source from its hub id


def test_feedback_paper_uses_the_released_instructions_prompts_and_reference():
    cfg = paper("feedback_paper")
    assert cfg.dataset.name == "sparse_feedback"
    assert set(cfg.dataset.sources) == {"dolly", "self_instruct", "super_natural_instructions"}
    assert list(cfg.dataset.heldout.alpaca_eval_unseen.drop_datasets) == ["selfinstruct"]
    assert cfg.feedback.prompts == "train" and cfg.feedback.responses_per_instruction == 5
    assert cfg.feedback.rating_line == "first" and "Example 1" in cfg.feedback.rating_template
    assert cfg.generate.prompts == "alpaca_eval_unseen" and cfg.generate.best_of_n == 64
    assert cfg.feedback_eval.reference == "alpaca_eval_davinci003"


@pytest.mark.parametrize(("protocol", "epochs", "batch"), [("ratings", 5, 12), ("rankings", 2, 4)])
def test_feedback_paper_dry_run_shows_the_released_reward_model_settings(
    protocol, epochs, batch, tmp_path, capsys
):
    cfg = compose(
        [
            "stage=feedback_rm",
            "experiment=feedback_paper",
            f"feedback_rm.protocol={protocol}",
            "dry_run=true",
            "logger=none",
            f"paths.root={tmp_path}",
        ]
    )
    run_stage(cfg)
    out = capsys.readouterr().out
    assert "LoRA: rank 32, alpha 16, q_proj, v_proj" in out
    assert f"num_train_epochs={float(epochs)}" in out
    assert f"global_batch={batch} " in out
    assert "learning_rate=0.0001" in out


def test_rubric_prometheus_keeps_every_row_in_the_recipe_format():
    cfg = paper("rubric_prometheus")
    assert cfg.preprocess.rubric.dedupe is False and cfg.preprocess.rubric.format == "recipe"
    assert cfg.grpo.scale_rewards == "none" and cfg.grpo.max_completion_length == 1024
    assert cfg.grpo.lora_rank == 32 and cfg.grpo.kl_coef == 0.0
    defaults = compose(["stage=preprocess", "dataset=prometheus"])
    assert defaults.preprocess.rubric.dedupe is True  # the option stays available


def test_cloud_paper_dry_run_names_the_oracle_stage(tmp_path, capsys):
    run_stage(paper("cloud_paper", "dry_run=true", f"paths.root={tmp_path}"))
    out = capsys.readouterr().out
    assert "stage oracle not run" in out and "experiment=cloud_paper" in out
    assert "mode=cloud: critique SFT -> self-critiques" in out


def test_a_reward_model_hash_covers_its_own_protocol_settings_only(tmp_path):
    from autorule.core.artifacts import config_hash

    base = ["stage=feedback_rm", "experiment=feedback_paper", f"paths.root={tmp_path}"]

    def digest(*overrides):
        return config_hash(
            compose([*base, "feedback_rm.protocol=ratings", *overrides]), "feedback_rm"
        )

    assert digest() == digest("feedback_rm.per_protocol.rankings.num_train_epochs=3")
    assert digest() != digest("feedback_rm.per_protocol.ratings.num_train_epochs=3")
