"""GRPO on rubric data on the tiny profile, graded through the real openai client by scripted
graders on the OpenAI-compatible test server: the metrics are wired to the grades, the addition
data is graded exactly, and a rubric reward the policy can earn rises."""

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from autorule.core.artifacts import read_manifest
from autorule.core.config import compose
from autorule.stages import grpo, preprocess
from autorule.training import lora
from fakeserver import FakeLLMServer, FakeReply

pytestmark = pytest.mark.slow

METRICS = ("rubric/format", "rubric/score", "rubric/unparsed", "rubric/failed", "rubric/item_0")


@pytest.fixture(scope="module")
def root(trained):
    """The session's trained policy, with the tiny rubric data preprocessed beside it."""
    root = trained["sft"].parents[1]
    for data in ("prometheus", "addition"):
        preprocess.run(compose([f"dataset={data}", f"paths.root={root}"]))
    return root


def rubric_config(root, server, *overrides):
    return compose(
        [
            "stage=grpo",
            f"paths.root={root}",
            "grpo.rewards=[rubric]",
            "grpo.prompt_split=train",
            "llm@rubric.grader=openai",
            f"rubric.grader.base_url={server.url}/v1",
            "rubric.grader.model=scripted-grader",
            "rubric.grader.progress=false",
            *overrides,
        ]
    )


def parts(prompt: str) -> tuple[str, str, str]:
    """The conversation, the reply and what follows it (rubric, format) of a grader prompt."""
    conversation = prompt.split("<conversation>\n", 1)[1].split("\n</conversation>", 1)[0]
    reply, rest = prompt.split("<reply>\n", 1)[1].split("\n</reply>", 1)
    return conversation, reply, rest


def history_of(path) -> list[dict]:
    lines = (path / grpo.LOG_HISTORY).read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if "rewards/rubric/mean" in entry]


def by_length(request) -> FakeReply:
    """A grader that scores 1-5 by the reply's length, and writes no score for one reply in
    three (by length too): deterministic, so the logged metrics can be recomputed."""
    _, reply, _ = parts(request.prompt)
    if len(reply) % 3 == 0:
        return FakeReply(text="I cannot grade this.")
    return FakeReply(text=f"Graded. <score>{1 + len(reply) % 5}</score>")


def test_tiny_grpo_on_feedback_collection_rubrics_logs_what_the_grader_said(root, capsys):
    with FakeLLMServer(by_length) as server:
        cfg = rubric_config(
            root,
            server,
            "grpo.rubric_dataset=prometheus",
            "grpo.max_steps=2",
            "grpo.lora_rank=4",
            "rubric.debug_examples=1",
        )
        path = grpo.run(cfg)
        requests = list(server.requests)
    manifest = read_manifest(path)
    assert set(manifest["inputs"]) == {"preprocess", "sft"}
    assert "/preprocess/prometheus-" in manifest["inputs"]["preprocess"]["path"]

    # Every grade request: one user message holding an instruction of the data, the reply set
    # apart, then the converted rubric and its 1-5 format instruction.
    data = next((root / "preprocess").glob("prometheus-*/train.jsonl"))
    instructions = {json.loads(line)["convo"][0]["content"] for line in data.open()}
    assert len(requests) == 2 * 16  # two steps of 4 prompts x 4 answers, one item each
    for request in requests:
        assert len(request.body["messages"]) == 1
        conversation, reply, rest = parts(request.prompt)
        assert conversation.removeprefix("User:\n") in instructions
        assert "Judge the reply on this criterion:" in rest and "from 1 to 5" in rest

    history = history_of(path)
    assert len(history) == 2
    for entry in history:
        for key in METRICS:
            assert key in entry, key
        # reward = mean item score + 0.1 x (format_ok - 1), averaged over the step's answers
        expected = entry["rubric/score"] - 0.1 * (1 - entry["rubric/format"])
        assert entry["rewards/rubric/mean"] == pytest.approx(expected, abs=1e-5)
        assert entry["rubric/failed"] == 0
    # The logged grades are the grader's: its scores (unparsed ones as 0) and its misses.
    scores, misses = [], 0
    for request in requests:
        found = re.search(r"<score>(\d)</score>", by_length(request).text)
        scores.append(int(found.group(1)) if found else 0)
        misses += found is None
    assert 0 < misses < len(requests)
    logged = [entry["rubric/score"] for entry in history]
    assert sum(logged) / 2 == pytest.approx(sum(scores) / len(scores), abs=1e-5)
    unparsed = [entry["rubric/unparsed"] for entry in history]
    assert sum(unparsed) / 2 == pytest.approx(misses / len(requests), abs=1e-5)
    assert [e["rubric/item_0"] for e in history] == pytest.approx(logged)  # one item each

    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["rewards"] == ["rubric"]
    assert metrics["reward_rubric_end"] == history[-1]["rewards/rubric/mean"]

    # LoRA: the adapter is kept, and model/ is the SFT policy with it merged in.
    adapter = json.loads((path / lora.ADAPTER / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 32
    assert f"{lora.ADAPTER}/adapter_model.safetensors" in manifest["files"]
    tuned = AutoModelForCausalLM.from_pretrained(path / "model")
    start = AutoModelForCausalLM.from_pretrained(manifest["inputs"]["sft"]["path"] + "/model")
    tuned_weights, start_weights = tuned.state_dict(), start.state_dict()
    assert tuned_weights.keys() == start_weights.keys()  # a whole model, no adapter layers
    moved = [k for k in start_weights if not torch.equal(tuned_weights[k], start_weights[k])]
    assert moved and all(k.endswith("proj.weight") for k in moved), moved

    # The debug view: one example per logging step, with what the grader saw and said.
    out = capsys.readouterr().out
    for step in (1, 2):
        assert f"rubric example 1/1 at step {step}" in out
    assert out.count("Grader prompt, item 0") == 2 and "Judge the reply on this criterion" in out


def exact_sum(mistakes: list):
    """A grader that checks the sum itself: 1 when the reply holds x + y as a number, else 0.
    It reads x and y from the question and notes any rubric that asks for another number."""

    def grade(request) -> FakeReply:
        conversation, reply, rest = parts(request.prompt)
        x, y = map(int, re.findall(r"What is (\d+) \+ (\d+)\?", conversation)[-1])
        asked = int(re.search(r"Does the reply give (\d+) as the answer\?", rest).group(1))
        if asked != x + y or "What is 4 + 5?\n\nAssistant:\n9" not in conversation:
            mistakes.append(request.prompt)
        right = str(x + y) in re.findall(r"\d+", reply)
        return FakeReply(text=f"<score>{int(right)}</score>")

    return grade


def test_tiny_grpo_on_the_addition_data_graded_exactly_and_evaluated_on_its_test_split(root):
    mistakes: list[str] = []
    grade = exact_sum(mistakes)
    with FakeLLMServer(grade) as server:
        cfg = rubric_config(
            root,
            server,
            "grpo.rubric_dataset=addition",
            "grpo.max_steps=2",
            "grpo.eval_split=test",
            "grpo.eval_steps=2",
        )
        path = grpo.run(cfg)
        requests = list(server.requests)
    assert "/preprocess/addition-" in read_manifest(path)["inputs"]["preprocess"]["path"]
    # Two training steps of 16 answers, then the 16 test questions x 4 answers at step 2.
    assert len(requests) == 2 * 16 + 16 * 4 and not mistakes
    right = [int(re.search(r"<score>(\d)</score>", grade(r).text).group(1)) for r in requests]
    history = history_of(path)
    assert len(history) == 2
    for step, entry in enumerate(history):
        for key in METRICS:
            assert key in entry, key
        assert entry["rubric/unparsed"] == 0 and entry["rubric/failed"] == 0
        assert entry["rubric/score"] == pytest.approx(sum(right[16 * step : 16 * (step + 1)]) / 16)
    lines = (path / grpo.LOG_HISTORY).read_text().splitlines()
    [evaluation] = [e for e in map(json.loads, lines) if "eval_reward" in e]
    for key in METRICS:
        assert f"eval_{key}" in evaluation, key
    assert evaluation["eval_rubric/score"] == pytest.approx(sum(right[32:]) / 64)
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["eval_rows"] == 16
    assert metrics["eval_reward_rubric_end"] == evaluation["eval_rewards/rubric/mean"]


def says_one_to_digits(request) -> FakeReply:
    """Scores 1 when the reply holds a digit (about a third of the tiny SFT model's 16-token
    samples do, through several tokens: learnable), else 0."""
    _, reply, _ = parts(request.prompt)
    return FakeReply(text=f"<score>{int(any(ch.isdigit() for ch in reply))}</score>")


def test_the_rubric_reward_rises_when_the_grader_rewards_something_learnable(root):
    """Sign and wiring: with a grader that rewards digits, GRPO makes the policy write more."""
    with FakeLLMServer(says_one_to_digits) as server:
        cfg = rubric_config(
            root,
            server,
            "grpo.rubric_dataset=prometheus",
            "grpo.kl_coef=0.0",
            "grpo.learning_rate=1e-2",
            "grpo.max_steps=14",
            "grpo.num_generations=8",
            "grpo.prompts_per_rollout=2",
            "grpo.save_steps=100",
        )
        path = grpo.run(cfg)
    scores = [entry["rubric/score"] for entry in history_of(path)]
    assert len(scores) == 14
    first, last = sum(scores[:4]) / 4, sum(scores[-4:]) / 4
    assert last >= first + 0.25, scores


def test_a_prompt_set_smaller_than_one_rollout_is_refused(root):
    """Otherwise TRL would run no step at all and the stage would commit the SFT policy."""
    with FakeLLMServer(says_one_to_digits) as server:
        cfg = rubric_config(
            root,
            server,
            "grpo.rubric_dataset=prometheus",
            "grpo.max_prompts=8",
            "grpo.global_batch_size=40",
            "grpo.micro_batch_size=8",
            "grpo.prompts_per_rollout=10",
        )
        with pytest.raises(ValueError, match="gives 8 prompts .* fewer than one rollout"):
            grpo.run(cfg)
        assert not server.requests
