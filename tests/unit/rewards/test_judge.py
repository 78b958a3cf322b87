"""The rule judge: verdict parsing, prompt layout and truncation, both modes against a served
judge (the test server's scripted judge), and the hf backend's shared-prefix verdicts."""

import math
import time

import numpy as np
import pytest

from autorule.data.models import resolve
from autorule.llm.hf import HFLLM, group_by_prefix, last_token_logprobs
from autorule.rewards.judge import (
    RuleJudge,
    fit_conversation,
    parse_verdict,
    strip_template,
    yes_probability,
)
from fakeserver import FakeLLMServer, FakeReply, ScriptedJudge

RESPONSES = ["Paris is the capital of France.", "Bonjour! Je suis ici.", "def f(): return 1"]
PROMPTS = ["<|user|>Capital of France?<|assistant|>", "<|user|>Greet me.<|assistant|>", "Code?"]
RULES = ["The reply is written in English.", "The reply is one sentence.", "The reply has code."]
YES = {
    (RESPONSES[0], RULES[0]),
    (RESPONSES[0], RULES[1]),
    (RESPONSES[1], RULES[1]),
    (RESPONSES[2], RULES[2]),
}
KNOWN = np.array([[(r, rule) in YES for rule in RULES] for r in RESPONSES])


# --------------------------------------------------------------------------------------------
# Pure pieces


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        ("It follows the rule.\n\n[[Yes]]", True),
        ("Too long. [[No]]", False),
        ("Verdict: **[[Yes]]**.", True),
        ("[[Yes]] because it is short", None),  # text after the marker
        ("Either [[Yes]] or [[No]]", None),  # both markers
        ("Yes", None),
        ("[[yes]]", None),  # the marker is case-sensitive
        ("", None),
    ],
)
def test_verdicts_are_parsed_strictly(answer, verdict):
    assert parse_verdict(answer) is verdict


def test_yes_probability_compares_the_two_choices_only():
    choices = ("Yes", "No")
    assert yes_probability({"Yes": math.log(0.6), "No": math.log(0.2)}, choices) == pytest.approx(
        0.75
    )
    assert yes_probability({"Yes": math.log(0.6), "No": None}, choices) == 1.0  # No not listed
    assert yes_probability({"Yes": None, "No": -0.1}, choices) == 0.0
    assert yes_probability({"Yes": None, "No": None}, choices) is None
    assert yes_probability({"Yes": -1000.0, "No": 0.0}, choices) == 0.0  # no overflow


def test_formatted_prompts_are_shown_bare():
    template = "<|user|>{prompt}<|assistant|>"
    assert strip_template("<|user|>Hi there<|assistant|>", template) == "Hi there"
    assert strip_template("A chat-template prompt", template) == "A chat-template prompt"


def test_fit_conversation_cuts_the_response_and_keeps_its_head():
    words = lambda text: len(text.split())  # noqa: E731 - a whitespace "tokenizer"
    head = lambda text, n: " ".join(text.split()[:n])  # noqa: E731
    response = " ".join(f"w{i}" for i in range(200))
    prompt, cut, was_cut = fit_conversation("Tell me a story", response, 60, words, head, "[cut]")
    assert was_cut and prompt == "Tell me a story"
    assert cut.startswith("w0 w1 w2") and cut.endswith("[cut]") and "w199" not in cut
    assert words(f"User:\n{prompt}\n\nAssistant:\n{cut}") <= 60
    # A request that alone is too long gives way too, but the response keeps half the room.
    long_prompt = " ".join(f"p{i}" for i in range(200))
    prompt, cut, _ = fit_conversation(long_prompt, response, 60, words, head, "[cut]")
    assert prompt.startswith("p0 p1") and prompt.endswith("[cut]")
    assert cut.startswith("w0") and words(cut) >= 20
    assert fit_conversation("Hi", "Short.", 60, words, head, "[cut]") == ("Hi", "Short.", False)


# --------------------------------------------------------------------------------------------
# Prompt layout and truncation with a real tokenizer


def test_rules_come_last_and_share_the_conversation(make_cfg):
    judge = RuleJudge(make_cfg("judge.mode=logprob"))
    requests = judge.requests(RESPONSES[:2], RULES, prompts=PROMPTS[:2])
    assert len(requests) == 2 * len(RULES)
    texts = [r[0]["content"] for r in requests]
    for k, text in enumerate(texts):
        assert text.endswith(f"Rule: {RULES[k % 3]}")
        assert "Answer with one word, Yes or No." in text  # the judge's question
    # Response by response; the three rules of a response differ only in their ending.
    shared = texts[0][: texts[0].index("Rule: ")]
    assert all(t.startswith(shared) for t in texts[:3]) and not texts[3].startswith(shared)
    assert "User:\nCapital of France?\n\nAssistant:\nParis" in texts[0]  # template stripped


def test_truncation_keeps_the_rule_and_the_question(make_cfg):
    cfg = make_cfg("judge.mode=logprob", "judge.max_input_tokens=700")
    judge = RuleJudge(cfg)
    long_response = "The first sentence stays. " + "And then it goes on and on. " * 400
    requests = judge.requests([long_response, RESPONSES[0]], RULES, prompts=PROMPTS[:2])
    question = cfg.judge.prompts.logprob.split("\n")[0]
    marker = cfg.judge.prompts.cut_marker
    for k, request in enumerate(requests):
        text = request[0]["content"]
        assert judge._chat_tokens(request) <= 700
        assert question in text and text.endswith(f"Rule: {RULES[k % 3]}")
        assert "Capital of France?" in text or "Greet me." in text
    long_text, short_text = requests[0][0]["content"], requests[3][0]["content"]
    assert "The first sentence stays." in long_text and marker in long_text
    assert RESPONSES[0] in short_text and marker not in short_text
    with pytest.raises(ValueError, match="judge.max_input_tokens=50"):
        RuleJudge(make_cfg("judge.max_input_tokens=50")).requests(RESPONSES, RULES)


# --------------------------------------------------------------------------------------------
# A served judge (OpenAI-compatible test server)


def served_judge(make_cfg, server, mode: str, **kw) -> RuleJudge:
    return RuleJudge(
        make_cfg(
            "llm@judge.llm=openai",
            f"judge.llm.base_url={server.url}/v1",
            "judge.llm.model=judge",
            "judge.tokenizer=tiny",  # the served model's tokenizer, for the verdict-token check
            "judge.llm.progress=false",
            "judge.llm.retry.max_attempts=1",
            f"judge.mode={mode}",
            *[f"{k}={v}" for k, v in kw.items()],
        )
    )


@pytest.mark.parametrize("mode", ["generate", "logprob"])
def test_both_modes_give_the_known_decisions(make_cfg, mode, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0000000000000000")
    with FakeLLMServer(ScriptedJudge(RESPONSES, RULES, YES, p_yes=0.8)) as server:
        judge = served_judge(make_cfg, server, mode, **{"judge.llm.max_tokens": 300})
        result = judge.judge(RESPONSES, RULES, prompts=PROMPTS)
    assert (result.decisions == KNOWN).all()
    assert result.unparsed == 0 and result.failed == 0
    expected = np.where(KNOWN, 0.8, 0.2) if mode == "logprob" else KNOWN.astype(float)
    np.testing.assert_allclose(result.probs, expected, atol=1e-9)
    bodies = [r.body for r in server.requests]
    assert len(bodies) == KNOWN.size
    if mode == "logprob":
        assert all(b["max_tokens"] == 1 and b["logprobs"] is True for b in bodies)
        assert all(b["top_logprobs"] >= 5 for b in bodies)
    else:
        assert all(not b.get("logprobs") and b["max_tokens"] == 300 for b in bodies)
        assert result.answers[0][0].endswith("[[Yes]]")
    assert all(b["temperature"] == 0.0 for b in bodies)


def test_unreadable_verdicts_count_as_not_satisfied(make_cfg, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0000000000000000")
    a, b, c = (RESPONSES[0], RULES[0]), (RESPONSES[0], RULES[1]), (RESPONSES[1], RULES[0])
    garbled = {a: FakeReply(text="It does. [[Yes]] Mostly."), b: FakeReply(text="Yes")}
    with FakeLLMServer(ScriptedJudge(RESPONSES, RULES, YES, replies=garbled)) as server:
        result = served_judge(make_cfg, server, "generate").judge(RESPONSES, RULES, PROMPTS)
    assert result.unparsed == 2 and not result.decisions[0, 0] and not result.decisions[0, 1]
    # Logprob mode: a choice missing from the listed alternatives has probability 0.
    only_yes = FakeReply(text="Yes", top_logprobs=[("Yes", -0.5), ("Sure", -1.0)])
    only_no = FakeReply(text="No", top_logprobs=[("The", -0.2), (" No", -2.0)])
    neither = FakeReply(text="The", top_logprobs=[("The", -0.1), ("A", -3.0)])
    replies = {a: only_yes, b: neither, c: only_no}
    with FakeLLMServer(ScriptedJudge(RESPONSES, RULES, YES, replies=replies)) as server:
        result = served_judge(make_cfg, server, "logprob").judge(RESPONSES, RULES, PROMPTS)
    assert result.probs[0, 0] == 1.0 and result.probs[1, 0] == 0.0
    assert result.probs[0, 1] == 0.0 and result.unparsed == 1


def test_served_verdicts_overlap(make_cfg, monkeypatch):
    """All (response, rule) calls are in flight together (the LLM layer's thread pool)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0000000000000000")
    delay = 0.3
    with FakeLLMServer(ScriptedJudge(RESPONSES, RULES, YES), delay=delay) as server:
        judge = served_judge(make_cfg, server, "logprob", **{"judge.llm.max_concurrency": 16})
        start = time.perf_counter()
        judge.judge(RESPONSES, RULES, PROMPTS)
        elapsed = time.perf_counter() - start
    assert elapsed < 3 * delay, f"{KNOWN.size} calls of {delay}s took {elapsed:.2f}s"


def test_verdicts_are_cached_apart_from_answers(make_cfg, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0000000000000000")
    with FakeLLMServer(ScriptedJudge(RESPONSES, RULES, YES)) as server:
        first = served_judge(make_cfg, server, "logprob", **{"judge.llm.cache": "true"})
        first.judge(RESPONSES, RULES, PROMPTS)
        sent = len(server.requests)
        again = served_judge(make_cfg, server, "logprob", **{"judge.llm.cache": "true"})
        replay = again.judge(RESPONSES, RULES, PROMPTS)
        assert len(server.requests) == sent and (replay.decisions == KNOWN).all()
        request = again.requests(RESPONSES[:1], RULES[:1], PROMPTS[:1])[0]
        assert again.llm.cache_key(request) != again.llm.cache_key(request, (("Yes", "No"), 20))


def test_logprob_mode_needs_a_backend_with_logprobs(make_cfg):
    with pytest.raises(ValueError, match="bedrock backend"):
        RuleJudge(make_cfg("llm@judge.llm=bedrock", "judge.mode=logprob"))
    with pytest.raises(ValueError, match="judge.mode='vote' is not allowed"):
        RuleJudge(make_cfg("judge.mode=vote"))


# --------------------------------------------------------------------------------------------
# The hf backend: one forward pass per verdict, shared prefixes computed once


def test_group_by_prefix_on_literal_sequences():
    shared = list(range(100, 140))
    sequences = [shared + [1, 2], shared + [3], shared + [4, 5, 6], [7, 8, 9], [7, 8, 10]]
    assert group_by_prefix(sequences) == [(40, [0, 1, 2]), (2, [3, 4])]
    # A sequence that shares little with the group would cost its members more than it saves.
    assert group_by_prefix([shared + [1], shared + [2], shared[:3] + [9]]) == [
        (40, [0, 1]),
        (3, [2]),
    ]


def test_shared_prefix_verdicts_equal_full_forward_passes(make_cfg):
    import torch

    cfg = make_cfg("judge.mode=logprob")
    judge = RuleJudge(cfg)
    llm: HFLLM = judge.llm
    model, tokenizer = llm._load()
    requests = judge.requests(RESPONSES, RULES, prompts=PROMPTS)
    sequences = [
        tokenizer(llm._prompt(tokenizer, r), add_special_tokens=False)["input_ids"]
        for r in requests
    ]
    seen = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    try:
        shared = last_token_logprobs(model, sequences, tokenizer.pad_token_id, share_prefix=True)
        shared_tokens = sum(seen)
        seen.clear()
        full = last_token_logprobs(model, sequences, tokenizer.pad_token_id, share_prefix=False)
        full_tokens = sum(seen)
    finally:
        hook.remove()
    with torch.no_grad():  # the reference: each sequence alone, no padding, no cache
        alone = torch.stack(
            [
                torch.log_softmax(model(input_ids=torch.tensor([s])).logits[0, -1].float(), -1)
                for s in sequences
            ]
        )
    assert torch.allclose(shared, alone, atol=1e-4) and torch.allclose(full, alone, atol=1e-4)
    assert shared_tokens < full_tokens / 2  # the prefix really was computed once per response
    # Through the judge: the same p(Yes) as from the reference distribution.
    yes, no = (tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in ("Yes", "No"))
    expected = torch.sigmoid(alone[:, yes] - alone[:, no]).numpy().reshape(3, 3)
    result = judge.judge(RESPONSES, RULES, prompts=PROMPTS)
    np.testing.assert_allclose(result.probs, expected, atol=1e-4)
    assert result.decisions.tolist() == (expected >= cfg.judge.threshold).tolist()


def test_a_local_judge_runs_on_the_callers_device(make_cfg):
    assert RuleJudge(make_cfg(), device="cpu").llm.device == "cpu"  # judge.llm.device: auto
    pinned = make_cfg("judge.llm.device=meta")
    assert RuleJudge(pinned, device="cpu").llm.device == "meta"  # an explicit choice stays


def test_hf_generate_mode_counts_noise_as_unparsed(make_cfg):
    judge = RuleJudge(make_cfg("judge.mode=generate", "judge.llm.max_tokens=4"))
    result = judge.judge(RESPONSES[:1], RULES[:2], prompts=PROMPTS[:1])
    assert result.unparsed == 2 and not result.decisions.any()
    assert resolve(make_cfg(), "policy") == judge.llm.model  # `tiny` is the tiny policy model


# --------------------------------------------------------------------------------------------
# The paper's judge: prompt, truncation, parsing, logprob mode on [[Yes]]/[[No]]

PAPER = "prompts/judge@judge.prompts=paper"


def test_paper_prompt_puts_the_rule_first_asks_for_concision_and_ends_with_the_verdict(make_cfg):
    judge = RuleJudge(make_cfg(PAPER, "judge.mode=generate"))
    [request] = judge.requests(RESPONSES[:1], RULES[:1], prompts=PROMPTS[:1])
    [message] = request  # generate mode: the user's turn only
    text = message["content"]
    rule, conversation = text.index(RULES[0]), text.index(RESPONSES[0])
    assert rule < conversation  # the rule before the conversation
    # The conversation as the policy saw it: its prompt template, then the response.
    assert "<|user|>Capital of France?<|assistant|>Paris is the capital" in text
    assert "is it concise" in text[conversation:]  # compliance and concision
    last = text.strip().splitlines()[-1]
    assert '"[[Yes]]"' in last and '"[[No]]"' in last and "nothing else" in last


def test_paper_settings_under_the_paper_profile(make_cfg):
    cfg = make_cfg("profile=paper")
    assert cfg.judge.prompts.opening == "[[" and cfg.judge.prompts.conversation_format == "policy"
    assert cfg.judge.truncation == "released" and cfg.judge.max_input_tokens == 1024
    assert cfg.judge.parse == "contains" and cfg.evaluate.protocol == "leaderboard"
    plain = make_cfg()
    assert plain.judge.truncation == "inside_response" and plain.judge.parse == "strict"


def test_released_truncation_cuts_the_whole_prompt_from_the_right_at_the_budget(make_cfg):
    judge = RuleJudge(make_cfg(PAPER, "judge.max_input_tokens=700", "judge.truncation=released"))
    long_response = "The first sentence stays. " + "And then it goes on and on. " * 200
    requests = judge.requests([long_response, RESPONSES[0]], RULES[:1], prompts=PROMPTS[:2])
    long, short = requests
    assert judge._chat_tokens(long) == 700  # counted with the judge's tokenizer and template
    text = long[0]["content"]
    assert text.index(RULES[0]) < text.index("The first sentence stays.")
    assert "[[Yes]]" not in text and "[Conversation ends]" not in text  # the question is gone
    assert text.endswith("on and on.") or "And then it goes on" in text[-80:]
    assert short[0]["content"] == judge.render(RULES[0], judge.show("Greet me.", RESPONSES[0]))


def test_inside_response_truncation_keeps_the_rule_and_the_question(make_cfg):
    judge = RuleJudge(make_cfg(PAPER, "judge.max_input_tokens=700"))
    long_response = "The first sentence stays. " + "And then it goes on and on. " * 200
    [request] = judge.requests([long_response], RULES[:1], prompts=PROMPTS[:1])
    text = request[0]["content"]
    assert judge._chat_tokens(request) <= 700
    assert RULES[0] in text and text.rstrip().endswith('"[[Yes]]" or "[[No]]" and nothing else.')
    assert judge.prompts["cut_marker"] in text and "The first sentence stays." in text


@pytest.mark.parametrize(
    ("answer", "contains", "strict"),
    [
        ("[[Yes]] It follows the rule, as shown above.", True, None),  # verdict first
        ("It is [[No]] at first sight, but on reflection [[Yes]]", True, None),  # both markers
        ("Verdict: [[No]]", False, False),
        ("Verdict: [[Yes]]", True, True),
        ("no marker at all", None, None),
    ],
)
def test_contains_reads_yes_anywhere_and_strict_only_one_at_the_end(answer, contains, strict):
    assert parse_verdict(answer, rule="contains") is contains
    assert parse_verdict(answer, rule="strict") is strict


def test_paper_logprob_mode_opens_the_reply_with_brackets(make_cfg, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0000000000000000")
    with FakeLLMServer(ScriptedJudge(RESPONSES, RULES, YES, p_yes=0.8)) as server:
        judge = served_judge(
            make_cfg, server, "logprob", **{"prompts/judge@judge.prompts": "paper"}
        )
        result = judge.judge(RESPONSES, RULES, prompts=PROMPTS)
    assert (result.decisions == KNOWN).all() and result.unparsed == 0
    for request in server.requests:
        messages = request.body["messages"]
        assert messages[-1] == {"role": "assistant", "content": "[["}  # the opening
        assert request.body["continue_final_message"] is True  # vLLM continues that message
        assert request.body["add_generation_prompt"] is False
        assert messages[0]["content"].index(RULES[0][:10]) < messages[0]["content"].index("[Conv")


def test_local_logprob_judge_continues_the_opening(make_cfg):
    judge = RuleJudge(make_cfg(PAPER, "judge.mode=logprob"))
    request = judge.requests(RESPONSES[:1], RULES[:1], prompts=PROMPTS[:1])[0]
    model, tokenizer = judge.llm._load()
    prompt = judge.llm._prompt(tokenizer, request)
    assert prompt.endswith("<|assistant|>[[")  # the verdict's token comes next, not <|end|>
    result = judge.judge(RESPONSES, RULES, prompts=PROMPTS)
    assert result.unparsed == 0 and ((result.probs > 0) & (result.probs < 1)).all()


# --------------------------------------------------------------------------------------------
# One verdict-token rule for served and local judges, checked at start


def test_served_and_local_judges_count_the_same_tokens_for_a_choice():
    from transformers import AutoTokenizer

    from autorule.llm.base import choice_logprobs, counts_for, verdict_token_ids

    assert counts_for("Yes", "Yes") and counts_for(" Y", "Yes") and counts_for("Ye", "Yes")
    assert not counts_for("Yesterday", "Yes") and not counts_for(" ", "Yes")
    served = choice_logprobs([("Y", math.log(0.3)), (" Yes", math.log(0.2))], ("Yes", "No"))
    assert served["Yes"] == pytest.approx(math.log(0.5)) and served["No"] is None
    tokenizer = AutoTokenizer.from_pretrained(resolve_tiny())
    yes_ids, no_ids = verdict_token_ids(tokenizer, ("Yes", "No"))
    first_yes = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    assert first_yes in yes_ids and all(counts_for(tokenizer.decode([i]), "Yes") for i in yes_ids)
    assert not set(yes_ids) & set(no_ids)


def resolve_tiny() -> str:
    from autorule.core.config import compose

    return resolve(compose([]))


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        ('["Yes","Yeah"]', "both choices begin with 'Y'"),
        ('["Yes",""]', "two non-empty choices"),
    ],
)
def test_choices_that_cannot_be_told_apart_are_refused_at_start(make_cfg, choices, message):
    from autorule.core.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        RuleJudge(make_cfg("judge.mode=logprob", f"judge.choices={choices}"))


def test_a_choice_that_merges_with_the_opening_is_refused_at_start(make_cfg):
    # "s" after an opening of "Ye" is read by the tiny tokenizer as part of the word.
    with pytest.raises(ValueError, match="cannot be read in logprob mode"):
        RuleJudge(
            make_cfg("judge.mode=logprob", "judge.prompts.opening=Ye", "judge.choices=[sure,nope]")
        )


def test_every_process_of_a_distributed_run_takes_the_same_step_decision(tmp_path):
    """Each process judges its own completions; the counts are summed over processes, so a
    failure on one makes all of them stop together (none is left waiting in a collective)."""
    import multiprocessing

    def worker(rank: int, out) -> None:
        import torch.distributed as dist

        from autorule.rewards.judge import across_processes

        store = f"file://{tmp_path / 'store'}"
        dist.init_process_group("gloo", init_method=store, rank=rank, world_size=2)
        try:
            out.put((rank, across_processes(rank * 3, 1, 8)))  # rank 1 saw 3 failures
        finally:
            dist.destroy_process_group()

    context = multiprocessing.get_context("fork")
    out = context.Queue()
    processes = [context.Process(target=worker, args=(rank, out)) for rank in (0, 1)]
    for process in processes:
        process.start()
    results = dict(out.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=30)
    assert results == {0: (3, 2, 16), 1: (3, 2, 16)}
    from autorule.rewards.judge import across_processes

    assert across_processes(3, 1, 8) == (3, 1, 8)  # not distributed: unchanged
