"""The evaluation stages refuse settings that cannot work, naming the key, before any work."""

import re

import pytest

from autorule.core.config import ConfigError, compose
from autorule.pipeline import run_stage


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stage=generate", "generate.best_of_n=0"], "generate.best_of_n=0 is not allowed"),
        (["stage=generate", "generate.top_p=0"], "generate.top_p=0 is not allowed"),
        (["stage=generate", "generate.dtype=int4"], "generate.dtype='int4' is not allowed"),
        (
            ["stage=generate", "generate.best_of_n=4", "generate.temperature=0"],
            "needs sampling",
        ),
        (
            ["stage=generate", "generate.model=base", "generate.checkpoints=true"],
            "generate.model=base is not one of the stages",
        ),
        (["stage=evaluate", "evaluate.prune_below=1.5"], "evaluate.prune_below=1.5"),
        (
            ["stage=evaluate", "evaluate.rule_agreement=false", "evaluate.prune_below=0.5"],
            "set evaluate.rule_agreement=true",
        ),
        (
            ["stage=evaluate", "evaluate.pairwise.template='{instruction} {response_a}'"],
            "missing: ['response_b']",
        ),
        (["stage=evaluate", "evaluate.judge.max_tokens=0"], "evaluate.judge.max_tokens=0"),
        (["stage=evaluate", "evaluate.alpaca_eval.run=always"], "evaluate.alpaca_eval.run"),
        (["stage=report", "report.dpi=0"], "report.dpi=0 is not allowed"),
    ],
)
def test_bad_settings_fail_before_any_work(tmp_path, overrides, message):
    cfg = compose([*overrides, f"paths.root={tmp_path}"])
    with pytest.raises((ConfigError, ValueError), match=message.replace("[", r"\[")):
        run_stage(cfg)
    assert not any(tmp_path.iterdir()), "nothing may be written"


@pytest.mark.parametrize("key", ["generate.model", "generate.reference"])
def test_a_dangling_symlink_as_the_model_is_named(tmp_path, key):
    link = tmp_path / "my-model"
    link.symlink_to(tmp_path / "deleted-checkpoint")
    root = tmp_path / "root"
    cfg = compose(["stage=generate", f"paths.root={root}", f"{key}={link}"])
    message = f"{key}={link} is a symbolic link to {tmp_path / 'deleted-checkpoint'}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_stage(cfg)
    assert not root.exists(), "nothing may be written"
