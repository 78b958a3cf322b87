"""GRPO on the tiny profile: every reward term wired and logged, and a rules reward that rises."""

import json
import math

import pytest
from grpo_timing import RewardTimer

from autorule.core.artifacts import read_manifest
from autorule.core.config import compose
from autorule.stages import extract, grpo
from fakeserver import FakeLLMServer, FakeReply

pytestmark = pytest.mark.slow


def test_tiny_grpo_logs_every_term_and_writes_the_rule_table(trained):
    root = trained["sft"].parents[1]
    cfg = compose(["stage=grpo", f"paths.root={root}", "grpo.max_steps=2"])
    assert list(cfg.grpo.rewards) == ["rm", "rules", "length_penalty"]
    extract.run(cfg)  # the rule set: the tiny model's noise gives the fallback rules
    path = grpo.run(cfg)

    manifest = read_manifest(path)
    assert manifest["status"] == "complete"
    assert set(manifest["inputs"]) == {"preprocess", "sft", "rm", "extract"}
    assert manifest["rules"]["from"] == "extract"
    assert (path / "model" / "config.json").is_file()

    history = [json.loads(line) for line in (path / grpo.LOG_HISTORY).read_text().splitlines()]
    logged = [entry for entry in history if "rewards/rm/mean" in entry]
    assert len(logged) == 2  # logging_steps=1, two optimizer steps
    table = json.loads((path / grpo.RULE_TABLE).read_text())
    assert len(table) == 8  # the example rule file's rules
    for entry in logged:
        for term in ("rm", "rules", "length_penalty"):
            assert math.isfinite(entry[f"rewards/{term}/mean"]), term
        for row in table:
            assert 0.0 <= entry[f"rules/{row['index']}"] <= 1.0
    assert [row["start"] for row in table] == [logged[0][f"rules/{i}"] for i in range(8)]
    assert [row["end"] for row in table] == [logged[-1][f"rules/{i}"] for i in range(8)]

    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and metrics["rewards"] == ["rm", "rules", "length_penalty"]
    for term in ("rm", "rules", "length_penalty"):
        assert metrics[f"reward_{term}_start"] == logged[0][f"rewards/{term}/mean"]
        assert metrics[f"reward_{term}_end"] == logged[-1][f"rewards/{term}/mean"]


def says_yes_to_digits(request) -> FakeReply:
    """A deterministic judge: the response satisfies the rule iff it holds a digit (about a
    third of the tiny SFT model's 16-token samples do, through several tokens: learnable). It
    answers logprob requests (the tiny profile's judge mode) with the first token's
    alternatives."""
    conversation = request.prompt.split("<conversation>", 1)[1].split("</conversation>", 1)[0]
    response = conversation.split("Assistant:", 1)[1]
    yes = any(ch.isdigit() for ch in response)
    p = 0.99 if yes else 0.01
    alternatives = sorted([("Yes", math.log(p)), ("No", math.log(1 - p))], key=lambda alt: -alt[1])
    return FakeReply(text=alternatives[0][0], top_logprobs=alternatives)


def served_judge(server) -> list[str]:
    """Overrides that make ``server`` the judge, in logprob mode."""
    return [
        "llm@judge.llm=openai",
        f"judge.llm.base_url={server.url}/v1",
        "judge.llm.model=scripted-judge",
        "judge.tokenizer=tiny",  # checks the verdict tokens at start
        "judge.llm.progress=false",
        "judge.mode=logprob",
    ]


def test_the_rules_reward_rises_when_the_judge_rewards_something_learnable(trained, tmp_path):
    """Sign and wiring: with a judge that rewards digits, GRPO makes the policy write more."""
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(["The response contains a number written in digits."]))
    root = trained["sft"].parents[1]
    with FakeLLMServer(says_yes_to_digits) as server:
        cfg = compose(
            [
                "stage=grpo",
                f"paths.root={root}",
                f"rules.path={rules}",
                "grpo.rewards=[rules]",
                "grpo.kl_coef=0.0",
                "grpo.learning_rate=1e-2",
                "grpo.max_steps=14",
                "grpo.num_generations=8",
                "grpo.prompts_per_rollout=2",
                "grpo.save_steps=100",
                *served_judge(server),
            ]
        )
        path = grpo.run(cfg)
        assert all(r.body.get("max_tokens") == 1 for r in server.requests)
    history = [json.loads(line) for line in (path / grpo.LOG_HISTORY).read_text().splitlines()]
    rates = [entry["rules/0"] for entry in history if "rules/0" in entry]
    assert len(rates) == 14
    first, last = sum(rates[:4]) / 4, sum(rates[-4:]) / 4
    assert last >= first + 0.25, rates


def test_grpo_resumes_after_an_interruption(trained):
    from autorule.core.artifacts import artifact_path, work_path
    from e2e.test_sft import Interrupted, StopAfterSave

    root = trained["sft"].parents[1]
    # length_penalty alone: no judge or reward model, so the run is short.
    cfg = compose(
        ["stage=grpo", f"paths.root={root}", "grpo.rewards=[length_penalty]", "grpo.save_steps=2"]
    )
    with pytest.raises(Interrupted):
        grpo.run(cfg, callbacks=[StopAfterSave(2)])
    assert (work_path(artifact_path(cfg, "grpo")) / "checkpoints" / "checkpoint-2").is_dir()
    path = grpo.run(cfg)  # the same command again
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2 and metrics["global_step"] == 4
    history = [json.loads(line) for line in (path / grpo.LOG_HISTORY).read_text().splitlines()]
    assert [e["step"] for e in history if "rewards/length_penalty/mean" in e] == [1, 2, 3, 4]


def test_kept_checkpoints_are_models_for_the_reward_hacking_curve(trained):
    from transformers import AutoModelForCausalLM

    root = trained["sft"].parents[1]
    cfg = compose(
        [
            "stage=grpo",
            f"paths.root={root}",
            "grpo.rewards=[length_penalty]",
            "grpo.save_steps=2",
            "grpo.keep_checkpoints=true",
        ]
    )
    path = grpo.run(cfg)
    kept = sorted(p.name for p in (path / "checkpoints").glob("checkpoint-*"))
    assert kept == ["checkpoint-2", "checkpoint-4"]  # save_total_limit does not apply
    for name in kept:
        folder = path / "checkpoints" / name
        assert not list(folder.glob("optimizer*")) and not list(folder.glob("rng_state*"))
        AutoModelForCausalLM.from_pretrained(folder)


def test_the_reward_terms_of_a_step_overlap(trained, tmp_path, monkeypatch):
    """grpo.concurrent_rewards (the default): with a served judge that answers after 0.3 s and an
    rm made slower by a scripted 0.6 s, the reward phase of a step takes clearly less than the
    two terms' times added up (one after the other it would take their sum)."""
    timer = RewardTimer(monkeypatch, delays={"rm": 0.6})
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(["The response is polite.", "The response has digits."]))
    root = trained["sft"].parents[1]
    with FakeLLMServer(says_yes_to_digits, delay=0.3) as server:
        cfg = compose(
            [
                "stage=grpo",
                f"paths.root={root}",
                f"rules.path={rules}",
                "grpo.rewards=[rm,rules]",
                "grpo.max_steps=1",
                "grpo.save_steps=100",
                *served_judge(server),
                "judge.llm.cache=false",
                "judge.llm.max_concurrency=64",
            ]
        )
        assert cfg.grpo.concurrent_rewards
        grpo.run(cfg, callbacks=[timer.callback])
    phase = timer.phases[0]
    terms = timer.terms["rm"][0] + timer.terms["rules"][0]
    assert timer.terms["rules"][0] >= 0.3 and timer.terms["rm"][0] >= 0.6
    assert phase < 0.8 * terms, (phase, dict(timer.terms))
