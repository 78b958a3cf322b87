"""GRPO with the paper's rule judge on the tiny profile: a 25-rule file in both judge modes, and a
judge that dies in the middle of a run (the step stops before its update; resuming redoes it)."""

import json
import math

import pytest
from transformers import TrainerCallback

from autorule.core.artifacts import artifact_path, work_path
from autorule.core.config import compose
from autorule.rewards.judge import JudgeOutageError
from autorule.stages import grpo
from fakeserver import FakeLLMServer, FakeReply

pytestmark = pytest.mark.slow

# 25 rules, as many as the paper's UltraFeedback list (our own texts: no copy of theirs).
RULES = [f"The response handles point number {i} of the request with care." for i in range(25)]


@pytest.fixture
def rule_file(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"description": "25 test rules", "rules": RULES}))
    return path


def paper_run(trained, rule_file, *overrides):
    return compose(
        [
            "stage=grpo",
            f"paths.root={trained['sft'].parents[1]}",
            "grpo.rewards=[rules]",
            "grpo.max_steps=1",
            f"rules.path={rule_file}",
            "prompts/judge@judge.prompts=paper",
            *overrides,
        ]
    )


def says_yes_first(request) -> FakeReply:
    """A judge that puts its verdict first and explains after it: only judge.parse=contains
    reads it as satisfied."""
    return FakeReply(text="[[Yes]] The response follows the rule, and briefly.")


def test_the_paper_judge_on_a_25_rule_file_in_both_modes(trained, rule_file):
    # logprob mode: the tiny local model reads p(Yes) after the opening "[[".
    local = grpo.run(paper_run(trained, rule_file, "judge.mode=logprob"))
    table = json.loads((local / grpo.RULE_TABLE).read_text())
    assert [row["rule"] for row in table] == RULES and len(table) == 25
    assert all(0.0 <= row["start"] <= 1.0 for row in table)
    # generate mode: a served judge, the released parsing and truncation.
    with FakeLLMServer(says_yes_first) as server:
        cfg = paper_run(
            trained,
            rule_file,
            "judge.mode=generate",
            "judge.parse=contains",
            "judge.truncation=released",
            "judge.max_input_tokens=1024",
            "judge.tokenizer=tiny",
            "llm@judge.llm=openai",
            f"judge.llm.base_url={server.url}/v1",
            "judge.llm.model=scripted-judge",
            "judge.llm.progress=false",
        )
        served = grpo.run(cfg)
        prompts = [r.prompt for r in server.requests]
    table = json.loads((served / grpo.RULE_TABLE).read_text())
    assert len(table) == 25 and all(row["start"] == 1.0 for row in table)
    assert len(prompts) == 16 * 25  # 16 completions per step, 25 rules each
    assert all(p.index("[Rule]") < p.index("<|user|>") < p.index("<|assistant|>") for p in prompts)


class Judge:
    """A served judge that can be taken down and brought back."""

    def __init__(self):
        self.up = True

    def __call__(self, request) -> FakeReply:
        if not self.up:
            return FakeReply(status=503, message="the judge is down")
        p = 0.9 if "1" in request.prompt else 0.4
        return FakeReply(text="Yes", top_logprobs=[("Yes", math.log(p)), ("No", math.log(1 - p))])


class TakeDownAfterSave(TrainerCallback):
    def __init__(self, judge: Judge, step: int):
        self.judge, self.step = judge, step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            self.judge.up = False


def test_a_judge_that_dies_mid_run_stops_the_step_and_resuming_redoes_it(trained, tmp_path):
    judge = Judge()
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(RULES[:2]))
    with FakeLLMServer(judge) as server:
        cfg = compose(
            [
                "stage=grpo",
                f"paths.root={trained['sft'].parents[1]}",
                "grpo.rewards=[rules]",
                "grpo.max_steps=2",
                "grpo.save_steps=1",
                f"rules.path={rules}",
                "llm@judge.llm=openai",
                f"judge.llm.base_url={server.url}/v1",
                "judge.llm.model=scripted-judge",
                "judge.tokenizer=tiny",
                "judge.llm.progress=false",
                "judge.llm.retry.max_attempts=1",
                "judge.mode=logprob",
            ]
        )
        with pytest.raises(JudgeOutageError, match=f"judge.llm.base_url={server.url}/v1"):
            grpo.run(cfg, callbacks=[TakeDownAfterSave(judge, 1)])
        checkpoints = work_path(artifact_path(cfg, "grpo")) / "checkpoints"
        assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-1"]
        judge.up = True  # the judge is back: the same command resumes
        path = grpo.run(cfg)
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 1 and metrics["global_step"] == 2
    assert metrics["steps_with_failed_verdicts"] == []
    history = [json.loads(line) for line in (path / grpo.LOG_HISTORY).read_text().splitlines()]
    assert [e["step"] for e in history if "rules/0" in e] == [1, 2]  # step 2 once, resumed
