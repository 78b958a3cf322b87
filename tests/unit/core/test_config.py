"""Every stage's ``check(cfg)``: bad numbers refused up front, naming the key and the range."""

import pytest

from autorule.core.config import ConfigError, check_number, compose
from autorule.core.stage import builtin_stages, load
from autorule.pipeline import check_stages
from autorule.training.arguments import max_steps


def test_check_number_names_the_key_and_the_allowed_range():
    check_number(3, "a.b", low=1)
    check_number(None, "a.b", low=1, none_ok=True)
    check_number(0.5, "a.r", integer=False, low=0, high=1, high_open=True)
    for value, allowed, message in (
        (0, {"low": 1}, "a.b=0 is not allowed: it must be an integer >= 1"),
        (1.5, {}, "a.b=1.5 is not allowed: it must be an integer"),
        (True, {}, "a.b=True is not allowed: it must be an integer"),
        ("8", {"low": 1}, "a.b='8' is not allowed: it must be an integer >= 1"),
        (None, {"low": 1}, "a.b=None is not allowed: it must be an integer >= 1"),
        (
            1.0,
            {"integer": False, "low": 0, "high": 1, "high_open": True},
            "a.b=1.0 is not allowed: it must be a finite number in [0, 1)",
        ),
        (0, {"low": 0, "low_open": True, "none_ok": True}, "an integer > 0 or null"),
        (float("nan"), {"integer": False}, "a.b=nan is not allowed: it must be a finite number"),
        (float("inf"), {"integer": False, "low": 0}, "a.b=inf is not allowed"),
    ):
        with pytest.raises(ConfigError) as err:
            check_number(value, "a.b", **allowed)
        assert message in str(err.value)


def test_every_stage_has_a_check():
    names = builtin_stages()
    assert {"preprocess", "extract", "sft", "rm", "grpo"} <= set(names)
    for name in names:
        assert callable(getattr(load(name), "check", None)), name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stage=preprocess", "preprocess.test_subset_size=0"], "preprocess.test_subset_size=0"),
        (["stage=preprocess", "preprocess.filter.max_tokens=-5"], "preprocess.filter.max_tokens="),
        (
            ["stage=preprocess", "dataset=mt", "preprocess.mt_train_per_block=10"],
            "preprocess.mt_train_per_block=10 is not allowed: it must be an integer in [1, 9]",
        ),
        (["stage=preprocess", "preprocess.splits=[train_sft]"], "must include test_prefs"),
        (["stage=extract", "dataset=mt", "extract.num_questions=0"], "an integer >= 1 or null"),
        (["stage=extract", "dataset=mt", "extract.examples_per_question=0"], "per_question=0"),
        (
            ["stage=extract", "extract.llm.temperature=-1"],
            "extract.llm.temperature=-1 is not allowed",
        ),
        (
            ["stage=extract", "llm@extract.llm=openai", "extract.llm.max_tokens=0"],
            "extract.llm.max_tokens=0 is not allowed",
        ),
        (
            ["stage=extract", "llm@extract.llm=bedrock", "extract.llm.read_timeout=0"],
            "extract.llm.read_timeout=0",
        ),
        (["stage=extract", "extract.rules_from=answers"], "extract.rules_from='answers'"),
        (["stage=sft", "sft.warmup_ratio=1"], "sft.warmup_ratio=1 is not allowed"),
        (["stage=sft", "sft.save_steps=0"], "sft.save_steps=0 is not allowed"),
        (["stage=sft", "sft.max_steps=-1", "sft.num_train_epochs=0"], "while sft.max_steps <= 0"),
        (["stage=sft", "sft.learning_rate=0"], "sft.learning_rate=0 is not allowed"),
        (["stage=sft", "launcher.num_processes=0"], "launcher.num_processes=0"),
        (["stage=rm", "rm.init=scratch"], "rm.init='scratch' is not allowed"),
        (["stage=rm", "rm.eval_steps=0"], "rm.eval_steps=0 is not allowed"),
    ],
)
def test_bad_values_are_refused_by_the_stage_check(tmp_path, overrides, message):
    cfg = compose([f"paths.root={tmp_path}", *overrides])
    with pytest.raises(ConfigError) as err:
        check_stages(cfg, [cfg.stage])
    assert message in str(err.value)
    assert not any(tmp_path.iterdir())


def test_the_default_and_paper_configs_pass_every_check(tmp_path):
    for profile in ("tiny", "paper"):
        for dataset in ("uf", "mt"):
            cfg = compose([f"paths.root={tmp_path}", f"profile={profile}", f"dataset={dataset}"])
            # MT-Bench has only rules to extract; every other stage reads UltraFeedback.
            stages = builtin_stages() if dataset == "uf" else ["preprocess", "extract"]
            check_stages(cfg, stages)


@pytest.mark.parametrize(("value", "expected"), [(8, 8), (0, -1), (-1, -1), (-7, -1)])
def test_max_steps_zero_or_below_means_epochs(value, expected):
    assert max_steps({"max_steps": value}) == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["llm@extract.llm=vllm", "extract.llm.gpu_memory_utilization=1.5"],
            "extract.llm.gpu_memory_utilization=1.5",
        ),
        (
            ["llm@extract.llm=vllm", "extract.llm.tensor_parallel_size=0"],
            "extract.llm.tensor_parallel_size=0",
        ),
        (["llm@extract.llm=hf", "extract.llm.max_input_tokens=0"], "an integer >= 1 or null"),
        (
            ["llm@extract.llm=openai", "extract.llm.retry.initial_wait=-1"],
            "extract.llm.retry.initial_wait=-1",
        ),
    ],
)
def test_llm_settings_are_checked_for_every_backend(tmp_path, overrides, message):
    cfg = compose([f"paths.root={tmp_path}", "stage=extract", *overrides])
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        check_stages(cfg, ["extract"])


def test_with_values_sets_keys_and_records_the_overrides(make_cfg):
    from autorule.core.config import with_values

    cfg = make_cfg("generate.best_of_n=4", "feedback_rm.protocol=ratings")
    other = with_values(cfg, {"generate.best_of_reward": None, "feedback_rm.protocol": "rankings"})
    assert other.generate.best_of_reward is None and other.feedback_rm.protocol == "rankings"
    assert cfg.feedback_rm.protocol == "ratings"  # the original is untouched
    assert "feedback_rm.protocol=ratings" not in other.run.overrides
    assert other.run.overrides[-2:] == [
        "generate.best_of_reward=null",
        "feedback_rm.protocol=rankings",
    ]
    assert "generate.best_of_n=4" in other.run.overrides


def test_the_feedback_samples_do_not_depend_on_the_feedback_reward_model(make_cfg):
    """feedback.source=generate samples with no reward ranking them, so a feedback reward model
    ranking generate's best-of-N later is no cycle (the hash would recurse forever)."""
    from autorule.core.artifacts import config_hash
    from autorule.stages import feedback

    cfg = make_cfg("experiment=feedback_study", "feedback.source=generate")
    assert cfg.generate.best_of_reward == "feedback_rm"
    samples = feedback.candidates_config(cfg)
    assert samples.generate.best_of_reward is None and samples.generate.best_of_n == 5
    assert samples.generate.prompts == "train_prefs"
    assert config_hash(cfg, "feedback_eval")  # finishes
    moved = make_cfg("experiment=feedback_study", "feedback.responses_per_instruction=3")
    assert config_hash(moved, "feedback") != config_hash(cfg, "feedback")
