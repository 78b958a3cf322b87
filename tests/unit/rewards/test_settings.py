"""Every numeric key of grpo, the reward terms, the judge, the rubric grader and every LLM role is
checked before any model loads, naming the key as the command line spells it.

The key list is derived from the composed config (for each LLM backend), so a key added later
without a check fails here instead of going unchecked.
"""

import copy
import math

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from autorule.core.config import ConfigError, compose
from autorule.core.stage import builtin_stages
from autorule.pipeline import check_stages

SECTIONS = ("grpo", "rewards", "judge", "rubric")
BACKENDS = ("hf", "openai", "bedrock", "vllm")
DEFAULT = BACKENDS[0]  # the tiny profile's
# Use every role, so each one's check runs (the feedback annotator is the heuristic stand-in
# on the tiny profile otherwise).
USE_ROLES = ("feedback.annotator=llm", "oracle.annotator=llm", "evaluate.win_rate=true")
# Numeric keys whose default is null, which the walk over values cannot see.
NULL_BY_DEFAULT = (
    "grpo.max_prompts",
    "grpo.lora_rank",
    "judge.max_input_tokens",
)


def roles(cfg: DictConfig) -> list[str]:
    """Every LLM role: a section whose _target_ is an autorule.llm backend."""
    found = []

    def walk(node, path):
        if isinstance(node, DictConfig):
            target = node._get_node("_target_") if "_target_" in node else None
            if target is not None and str(target._value()).startswith("autorule.llm."):
                found.append(path)
            for key in node:
                walk(node._get_node(key), f"{path}.{key}" if path else str(key))

    walk(cfg, "")
    return found


def numeric_keys(cfg: DictConfig) -> list[str]:
    """Dotted keys of every int or float (not bool) value under SECTIONS and every LLM role."""
    keys = []

    def walk(node, path):
        if isinstance(node, DictConfig):
            for key in node:
                walk(node[key], f"{path}.{key}")
        elif isinstance(node, ListConfig):
            pass  # lists of numbers (grpo.reward_weights) have tests of their own
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            keys.append(path)

    for top in (*SECTIONS, *roles(cfg)):
        walk(OmegaConf.select(cfg, top), top)
    return sorted(set(keys))


def composed(backend: str) -> DictConfig:
    mounts = [f"llm@{role}={backend}" for role in roles(compose([]))]
    cfg = compose(["paths.root=/nonexistent-autorule-root", *mounts, *USE_ROLES])
    OmegaConf.resolve(cfg)  # values as the checks see them; a later edit moves one key alone
    return cfg


def refused(cfg: DictConfig, key: str, value) -> str:
    bad = copy.deepcopy(cfg)
    with open_dict(bad):
        OmegaConf.update(bad, key, value, merge=False)
    with pytest.raises(ConfigError) as err:
        check_stages(bad, builtin_stages())
    return str(err.value)


@pytest.fixture(scope="module")
def configs():
    return {backend: composed(backend) for backend in BACKENDS}


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_composed_config_passes_every_check(configs, backend):
    check_stages(configs[backend], builtin_stages())


def test_every_numeric_key_refuses_nan_naming_itself(configs):
    # Every key on the tiny profile's backend (hf); for the others, the keys hf lacks (the
    # shared ones go through the same check whatever the backend).
    keys = {(DEFAULT, key) for key in numeric_keys(configs[DEFAULT])}
    keys |= {(DEFAULT, key) for key in NULL_BY_DEFAULT}
    seen = {key.rsplit(".", 1)[1] for _, key in keys}
    for backend in BACKENDS[1:]:
        keys |= {
            (backend, key)
            for key in numeric_keys(configs[backend])
            if key.rsplit(".", 1)[1] not in seen
        }
    assert {"grpo.top_p", "rewards.rules.scale", "judge.llm.max_tokens"} <= {k for _, k in keys}
    assert {"judge.llm.timeout", "extract.llm.read_timeout"} <= {k for _, k in keys}
    unchecked = []
    for backend, key in sorted(keys):
        try:
            message = refused(configs[backend], key, math.nan)
        except pytest.fail.Exception:
            unchecked.append(f"{key} ({backend})")
            continue
        assert f"{key}=nan" in message, (key, message)
    assert not unchecked, f"numeric keys nobody checks: {unchecked}"


# The values that once trained on a wrong result, crashed mid-training without naming the key,
# or were never checked up front; each is refused up front, naming the key and its range.
BAD = [
    ("grpo.num_iterations", 0, "grpo.num_iterations=0 is not allowed: it must be an integer >= 1"),
    ("grpo.top_p", 0, "grpo.top_p=0 is not allowed: it must be a finite number in (0, 1]"),
    ("grpo.top_p", 2, "grpo.top_p=2 is not allowed"),
    ("grpo.reward_weights", [1.0, math.nan, 1.0], "grpo.reward_weights[1]=nan is not allowed"),
    ("rewards.rules.scale", math.nan, "rewards.rules.scale=nan is not allowed"),
    ("rewards.rules.offset", math.inf, "rewards.rules.offset=inf is not allowed"),
    ("rewards.rubric.format_coef", math.nan, "rewards.rubric.format_coef=nan is not allowed"),
    ("rewards.length_penalty.norm", 0, "rewards.length_penalty.norm=0 is not allowed: it must"),
    ("rewards.feedback_rm.batch_size", 0, "rewards.feedback_rm.batch_size=0 is not allowed"),
    ("rewards.rm.dtype", "bogus", "rewards.rm.dtype='bogus' is not allowed: it must be one of"),
    ("judge.llm.timeout", 0, "judge.llm.timeout=0 is not allowed: it must be a finite number > 0"),
    ("rubric.grader.timeout", -1, "rubric.grader.timeout=-1 is not allowed"),
    ("judge.llm.max_tokens", 0, "judge.llm.max_tokens=0 is not allowed: it must be an integer >="),
    ("judge.llm.retry.max_attempts", 0, "judge.llm.retry.max_attempts=0 is not allowed"),
    ("rubric.grader.max_tokens", -1, "rubric.grader.max_tokens=-1 is not allowed"),
    ("judge.max_input_tokens", -5, "judge.max_input_tokens=-5 is not allowed"),
    ("grpo.loss_type", "ppo", "grpo.loss_type='ppo' is not allowed: it must be one of"),
    ("grpo.prompt_split", "trian_prefs", "grpo.prompt_split='trian_prefs' is not allowed"),
    ("grpo.reward_weights", [1.0, 2.0], "grpo.reward_weights=[1.0, 2.0] has 2 values"),
    ("grpo.rewards", ["rm", "rm"], "lists ['rm'] twice"),
    ("judge.prompts.generate", "Is it fine?", "judge.prompts.generate must contain"),
    ("rubric.prompt", "Grade {answer}.", "rubric.prompt must contain the placeholders"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_bad_values_are_refused_naming_the_key(configs, key, value, message):
    assert message in refused(configs["openai"], key, value)


def test_rule_and_rubric_files_are_read_up_front(configs, tmp_path):
    rules = tmp_path / "rules.json"
    rules.write_text('{"rules": "not a list"}')
    message = refused(configs["openai"], "rules.path", str(rules))
    assert message.startswith(f"rules.path={rules}: rule file {rules} must hold a list")
    rubric = tmp_path / "rubric.jsonl"
    rubric.write_text("{not json\n")
    message = refused(configs["openai"], "grpo.rubric_file", str(rubric))
    assert f"grpo.rubric_file={rubric}: file {rubric}, line 1: not valid JSON" in message
