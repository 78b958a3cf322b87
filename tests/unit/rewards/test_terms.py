"""Reward terms: the formulas on literal numbers, the registry, and each term as TRL calls it."""

import json
import shutil

import numpy as np
import pytest

from autorule.data.models import load_tokenizer, resolve
from autorule.rewards import REWARDS, RewardContext, build_reward_funcs, close_all, register
from autorule.rewards.judge import JudgeOutageError, UnreadableJudgeError
from autorule.rewards.terms import length_penalty, normalise, rm_statistics, rules_reward
from fakeserver import FakeLLMServer, FakeReply, ScriptedJudge

# --------------------------------------------------------------------------------------------
# Formulas


def test_rules_reward_is_the_released_formula():
    assert rules_reward(1.0) == pytest.approx(2.5)  # (1 - 0.75) x 10
    assert rules_reward(0.75) == 0.0
    assert rules_reward(0.0) == pytest.approx(-7.5)
    assert rules_reward(0.5, offset=0.5, scale=2.0) == 0.0


@pytest.mark.parametrize(
    ("length", "penalty"), [(0, 0.0), (300, 0.0), (450, -0.25), (600, -0.5), (900, -1.0)]
)
def test_length_penalty_is_the_paper_baseline(length, penalty):
    assert length_penalty(length) == pytest.approx(penalty)  # -relu(0.5 L / 300 - 0.5)


def test_normalise():
    assert normalise([3.0, 1.0], mean=1.0, std=2.0) == [1.0, 0.0]
    with pytest.raises(ValueError, match="reward_std"):
        normalise([1.0], mean=0.0, std=0.0)


# --------------------------------------------------------------------------------------------
# Registry


def test_unknown_and_repeated_terms_are_refused(make_cfg):
    context = RewardContext(make_cfg())
    with pytest.raises(ValueError, match=r"unknown reward term\(s\) \['rm_v2'\]; known: .*'rules'"):
        build_reward_funcs(["length_penalty", "rm_v2"], context)
    with pytest.raises(ValueError, match="listed twice"):
        build_reward_funcs(["length_penalty", "length_penalty"], context)


def test_a_registered_term_is_built_by_name(make_cfg, monkeypatch):
    monkeypatch.setattr("autorule.rewards.registry.REWARDS", dict(REWARDS))
    from autorule.rewards import registry

    @register("shouting")
    def shouting(context):
        def shouting(prompts, completions, **kwargs):
            return [float(c.isupper()) for c in completions]

        return shouting

    [func] = registry.build_reward_funcs(["shouting"], RewardContext(make_cfg()))
    assert func.__name__ == "shouting" and func(["p", "p"], ["HEY", "hey"]) == [1.0, 0.0]
    assert "shouting" not in REWARDS  # registered in the patched registry only


# --------------------------------------------------------------------------------------------
# Terms


def test_length_penalty_counts_policy_tokens(make_cfg):
    cfg = make_cfg()
    tokenizer = load_tokenizer(cfg)
    long_text = "word " * 2000
    n = len(tokenizer(long_text, add_special_tokens=False)["input_ids"])
    [func] = build_reward_funcs(["length_penalty"], RewardContext(cfg, tokenizer=tokenizer))
    assert func.__name__ == "length_penalty"
    assert func(["p", "p"], ["Hi.", long_text]) == [0.0, pytest.approx(0.5 - 0.5 * n / 300)]
    assert func.metrics()["length/tokens"] == pytest.approx((n + 2) / 2, abs=1)
    # Without the tokenizer, TRL's completion ids give the lengths.
    [bare] = build_reward_funcs(["length_penalty"], RewardContext(make_cfg()))
    assert bare(["p"], ["x"], completion_ids=[[1] * 900]) == [-1.0]
    with pytest.raises(ValueError, match="policy tokenizer"):
        bare(["p"], ["x"])


RESPONSES = ["Paris is the capital of France.", "Bonjour! Je suis ici."]
RULES = ["The reply is written in English.", "The reply is one sentence.", "The reply is short."]
YES = {(RESPONSES[0], RULES[0]), (RESPONSES[0], RULES[1]), (RESPONSES[0], RULES[2])}
YES |= {(RESPONSES[1], RULES[2])}


@pytest.mark.parametrize("mode", ["generate", "logprob"])
def test_rules_term_rewards_the_share_of_rules_satisfied(make_cfg, monkeypatch, mode):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0000000000000000")
    logged = []
    with FakeLLMServer(ScriptedJudge(RESPONSES, RULES, YES, p_yes=0.9)) as server:
        cfg = make_cfg(
            "llm@judge.llm=openai",
            f"judge.llm.base_url={server.url}/v1",
            "judge.llm.progress=false",
            f"judge.mode={mode}",
            "rewards.rules.scale=4.0",
        )
        [func] = build_reward_funcs(["rules"], RewardContext(cfg, rules=RULES))
        rewards = func(
            ["<|user|>Capital?<|assistant|>", "<|user|>Greet.<|assistant|>"],
            RESPONSES,
            log_metric=lambda name, value: logged.append((name, value)),
        )
        func(["Again?"], [RESPONSES[1]])
    assert func.__name__ == "rules"
    assert rewards == [pytest.approx((1 - 0.75) * 4), pytest.approx((1 / 3 - 0.75) * 4)]
    metrics = func.metrics()  # averaged over both calls, weighted by responses
    assert metrics["rules/0"] == pytest.approx(1 / 3) and metrics["rules/2"] == 1.0
    assert metrics["judge/unparsed"] == 0.0 and metrics["judge/failed"] == 0.0
    assert ("rules/1", 0.5) in logged and func.metrics() == {}  # reset after reading
    close_all([func])


def test_rules_term_soft_uses_probabilities(make_cfg, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0000000000000000")
    with FakeLLMServer(ScriptedJudge(RESPONSES, RULES, YES, p_yes=0.9)) as server:
        cfg = make_cfg(
            "llm@judge.llm=openai",
            f"judge.llm.base_url={server.url}/v1",
            "judge.llm.progress=false",
            "judge.mode=logprob",
            "judge.soft=true",
        )
        [func] = build_reward_funcs(["rules"], RewardContext(cfg, rules=RULES))
        rewards = func(["a", "b"], RESPONSES)
    assert rewards == [pytest.approx((0.9 - 0.75) * 10), pytest.approx((1.1 / 3 - 0.75) * 10)]


def served_rules_term(make_cfg, server, *overrides):
    cfg = make_cfg(
        "llm@judge.llm=openai",
        f"judge.llm.base_url={server.url}/v1",
        "judge.llm.progress=false",
        "judge.llm.retry.max_attempts=1",
        "judge.mode=generate",
        *overrides,
    )
    [func] = build_reward_funcs(["rules"], RewardContext(cfg, rules=RULES))
    return func


def test_a_step_with_failed_judge_calls_stops_before_its_update(make_cfg, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0000000000000000")
    down = {(RESPONSES[0], RULES[1]): FakeReply(status=500, message="judge restarting")}
    with FakeLLMServer(ScriptedJudge(RESPONSES, RULES, YES, replies=down)) as server:
        func = served_rules_term(make_cfg, server)
        with pytest.raises(JudgeOutageError, match=f"judge.llm.base_url={server.url}/v1"):
            func(["a", "b"], RESPONSES)
        # Above a tolerated share the step trains, and its metrics say so.
        tolerant = served_rules_term(make_cfg, server, "judge.max_failed_share=0.5")
        tolerant(["a", "b"], RESPONSES)
        assert tolerant.metrics()["judge/failed"] == pytest.approx(1 / 6)


def test_a_first_step_without_one_readable_verdict_stops(make_cfg, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0000000000000000")
    rambles = {(r, rule): FakeReply(text="Hmm, let me think.") for r in RESPONSES for rule in RULES}
    with FakeLLMServer(ScriptedJudge(RESPONSES, RULES, YES, replies=rambles)) as server:
        func = served_rules_term(make_cfg, server)
        with pytest.raises(UnreadableJudgeError, match="not one of the 6 verdicts"):
            func(["a", "b"], RESPONSES)
    # Later steps (or a first step with some verdicts) warn past judge.max_unparsed_share.
    half = {(RESPONSES[1], rule): FakeReply(text="Hmm.") for rule in RULES}
    half[(RESPONSES[0], RULES[0])] = FakeReply(text="Hmm.")
    with FakeLLMServer(ScriptedJudge(RESPONSES, RULES, YES, replies=half)) as server:
        func = served_rules_term(make_cfg, server)
        with caplog.at_level("WARNING", logger="autorule.rewards.judge"):
            func(["a", "b"], RESPONSES)
    assert "above judge.max_unparsed_share=0.5" in caplog.text


def test_a_local_judge_cuts_long_prompts_itself_and_refuses_long_rules(make_cfg, caplog):
    cfg = make_cfg("judge.mode=logprob")
    [func] = build_reward_funcs(["rules"], RewardContext(cfg, rules=RULES[:1]))
    judge = func.judge
    budget = judge.budget()  # no judge.max_input_tokens: the model's context window
    assert budget == judge.llm.input_limit() and budget < 4096
    long_response = "It starts here. " + "And it goes on. " * 2000
    with caplog.at_level("INFO", logger="autorule.rewards.judge"):
        [request] = judge.requests([long_response], RULES[:1], prompts=["Tell me."])
    assert judge._chat_tokens(request) <= budget and "It starts here." in request[0]["content"]
    assert request[0]["content"].endswith(f"Rule: {RULES[0]}")  # the rule and question stay
    assert "1 of 1 prompts cut" in caplog.text
    close_all([func])
    with pytest.raises(ValueError, match="rule file mine.json: rule 1 "):
        build_reward_funcs(
            ["rules"],
            RewardContext(
                cfg, rules=[RULES[0], "Be brief. " * 3000], rules_source="rule file mine.json"
            ),
        )


def test_rules_term_needs_rules(make_cfg):
    with pytest.raises(ValueError, match="non-empty rule set"):
        build_reward_funcs(["rules"], RewardContext(make_cfg(), rules=[]))


@pytest.fixture
def rm_folder(make_cfg, tmp_path):
    """A folder laid out like the rm artifact, holding the tiny reward model."""

    def _make(mean: float, std: float):
        folder = tmp_path / f"rm-{mean}-{std}"
        shutil.copytree(resolve(make_cfg(), "reward"), folder / "model")
        (folder / "metrics.json").write_text(json.dumps({"reward_mean": mean, "reward_std": std}))
        return folder

    return _make


def test_rm_term_normalises_with_the_rm_artifacts_statistics(make_cfg, rm_folder):
    import torch
    from transformers import AutoModelForSequenceClassification

    cfg = make_cfg("rewards.rm.batch_size=2")
    prompts = [f"<|user|>Question {i}?<|assistant|>" for i in range(5)]
    completions = ["Yes.", "A much longer answer with several words in it.", "No", "Maybe", "42"]
    folder = rm_folder(0.5, 2.0)
    model = AutoModelForSequenceClassification.from_pretrained(folder / "model").eval()
    tokenizer = load_tokenizer(cfg, name_or_path=str(folder / "model"))
    with torch.no_grad():  # one text at a time, no padding: prompt + answer + eos, as rm trained
        raw = [
            model(**tokenizer(p + c + tokenizer.eos_token, return_tensors="pt")).logits[0, 0].item()
            for p, c in zip(prompts, completions, strict=True)
        ]
    [func] = build_reward_funcs(["rm"], RewardContext(cfg, rm_folder=folder, device="cpu"))
    got = func(prompts, completions)
    np.testing.assert_allclose(got, [(r - 0.5) / 2.0 for r in raw], atol=1e-5)
    assert func.metrics()["rm/raw"] == pytest.approx(np.mean(raw), abs=1e-5)
    [other] = build_reward_funcs(["rm"], RewardContext(cfg, rm_folder=rm_folder(-1.0, 0.5)))
    np.testing.assert_allclose(other(prompts, completions), [(r + 1) / 0.5 for r in raw], atol=1e-5)
    close_all([func, other])


def test_rm_statistics_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        rm_statistics(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"reward_mean": 1.0}))
    with pytest.raises(ValueError, match=r"metrics.json has no numeric \['reward_std'\]"):
        rm_statistics(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"reward_mean": 1.0, "reward_std": 0.0}))
    with pytest.raises(ValueError, match="reward_std is 0.0"):
        rm_statistics(tmp_path)


def test_rm_term_needs_the_rm_artifact(make_cfg):
    with pytest.raises(ValueError, match="rm artifact"):
        build_reward_funcs(["rm"], RewardContext(make_cfg()))
