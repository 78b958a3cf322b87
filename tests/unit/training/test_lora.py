"""LoRA settings (autorule.training.lora), shared by grpo and feedback_rm: the check, the peft
config, the dry run's line and what the stages' hashes cover (nothing trains here)."""

import sys

import pytest

from autorule.core.artifacts import config_hash
from autorule.core.config import ConfigError, compose
from autorule.stages import feedback_rm, grpo
from autorule.training import lora

STAGES = {"grpo": grpo, "feedback_rm": feedback_rm}


def section(rank, alpha=32):
    return {"lora_rank": rank, "lora_alpha": alpha}


@pytest.fixture
def no_peft(monkeypatch):
    """``import peft`` raises ImportError, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "peft", None)


def test_no_rank_is_full_fine_tuning_and_checks_nothing_else(no_peft):
    lora.check(section(None, alpha=0), "feedback_rm")  # alpha unused, peft not needed
    assert lora.lora_config(section(None), "SEQ_CLS") is None
    assert lora.describe(section(None)) == []


@pytest.mark.parametrize(
    "rank, alpha, key",
    [
        (0, 32, "feedback_rm.lora_rank"),
        (2.5, 32, "feedback_rm.lora_rank"),
        (4, 0, "feedback_rm.lora_alpha"),
        (4, -1.0, "feedback_rm.lora_alpha"),
    ],
)
def test_a_bad_rank_or_alpha_is_refused_naming_the_key(rank, alpha, key):
    with pytest.raises(ConfigError, match=key):
        lora.check(section(rank, alpha), "feedback_rm")


def test_a_rank_without_peft_is_refused_with_the_install_command(no_peft):
    with pytest.raises(ConfigError) as err:
        lora.check(section(4), "feedback_rm")
    message = str(err.value)
    assert "feedback_rm.lora_rank=4" in message
    assert "pip install 'autorule[lora]'" in message and "feedback_rm.lora_rank=null" in message


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_checks_its_own_lora_keys(tmp_path, no_peft, stage):
    base = [f"stage={stage}", f"paths.root={tmp_path}"]
    STAGES[stage].check(compose(base))  # no adapter: peft is not needed
    with pytest.raises(ConfigError, match=f"{stage}.lora_rank=4 trains LoRA through peft"):
        STAGES[stage].check(compose([*base, f"{stage}.lora_rank=4"]))


def test_feedback_rm_refuses_a_bad_alpha(tmp_path):
    cfg = compose(
        [
            "stage=feedback_rm",
            f"paths.root={tmp_path}",
            "feedback_rm.lora_rank=4",
            "feedback_rm.lora_alpha=0",
        ]
    )
    with pytest.raises(ConfigError, match="feedback_rm.lora_alpha"):
        feedback_rm.check(cfg)


def test_peft_config_per_task_type():
    seq_cls = lora.lora_config(section(8, 16), "SEQ_CLS")
    assert (seq_cls.r, seq_cls.lora_alpha, seq_cls.task_type) == (8, 16.0, "SEQ_CLS")
    assert seq_cls.target_modules == "all-linear"
    assert lora.lora_config(section(8, 16), "CAUSAL_LM").task_type == "CAUSAL_LM"
    with pytest.raises(ValueError, match="SEQ_CLS"):
        lora.lora_config(section(8), "TOKEN_CLS")
    assert lora.describe(section(8, 16)) == ["LoRA: rank 8, alpha 16, all linear layers"]


def test_feedback_rm_hash_covers_alpha_only_with_an_adapter(tmp_path):
    base = ["stage=feedback_rm", f"paths.root={tmp_path}"]
    full = config_hash(compose(base), "feedback_rm")
    assert full == config_hash(compose([*base, "feedback_rm.lora_alpha=8"]), "feedback_rm")
    adapted = config_hash(compose([*base, "feedback_rm.lora_rank=4"]), "feedback_rm")
    assert adapted != full
    assert adapted != config_hash(
        compose([*base, "feedback_rm.lora_rank=4", "feedback_rm.lora_alpha=8"]), "feedback_rm"
    )


def test_feedback_rm_dry_run_names_the_adapter(tmp_path, capsys):
    cfg = compose(["stage=feedback_rm", f"paths.root={tmp_path}", "dry_run=true", "profile=paper"])
    feedback_rm.run(cfg)
    out = capsys.readouterr().out
    # The paper profile: the released reward models' LoRA (rank 32, alpha 16, q and v) at 1e-4.
    assert "\n  LoRA: rank 32, alpha 16, q_proj, v_proj\n" in out
    assert "learning_rate=0.0001" in out
    assert not any(tmp_path.iterdir()), "a dry run must not write anything"


def test_named_target_modules_and_dropout_reach_peft():
    config = lora.lora_config(
        {**section(32, 16), "lora_target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.05},
        "SEQ_CLS",
    )
    assert set(config.target_modules) == {"q_proj", "v_proj"} and config.lora_dropout == 0.05
    described = lora.describe({**section(32, 16), "lora_target_modules": ["q_proj", "v_proj"]})
    assert described == ["LoRA: rank 32, alpha 16, q_proj, v_proj"]
