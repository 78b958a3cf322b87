"""The reward server answers OpenRLHF's own remote reward client with the registry's rewards.

The paper-era client (OpenRLHF 0.6.x, ``openrlhf.utils.remote_rm_utils.remote_rm_fn``: one POST
per micro-batch, reads ``rewards``) is imported and called as it is. The current client
(0.9 and later: ``SingleTurnAgentExecutor._fetch_rewards_via_http``, one POST per response, reads
``rewards``, ``scores`` and ``extra_logs``) lives in a module that needs vLLM-era OpenRLHF, which
cannot be installed beside the paper's release, so its request is replayed here as its source
builds it: an aiohttp POST of ``{"query": [q], "prompts": [p], "labels": [label]}``.
"""

import asyncio
import json

import numpy as np
import pytest
import requests

from autorule.core.config import compose
from autorule.data.models import load_tokenizer
from autorule.rewards.registry import RewardContext, build_reward_funcs, close_all
from autorule.stages import reward_server
from fakeserver import FakeLLMServer, ScriptedJudge

pytestmark = pytest.mark.slow

RULES = ["The reply names a colour.", "The reply ends with a question."]
PROMPTS = ["<|user|>Describe the sky.<|assistant|>", "<|user|>Say something.<|assistant|>"]
RESPONSES = [
    "The sky is blue today, is it not?",
    "Grass grows slowly in spring.",
    "Roses are red and violets are too.",
    "What would you like to hear?",
]
YES = {(RESPONSES[0], RULES[0]), (RESPONSES[0], RULES[1]), (RESPONSES[2], RULES[0])}
YES |= {(RESPONSES[3], RULES[1])}
TERMS, WEIGHTS = ["rm", "rules", "length_penalty"], [1.0, 0.5, 2.0]


def judged_server_config(trained, folder, llm, *overrides: str):
    """The reward server's config on the trained tiny models, :data:`RULES` (written to
    ``folder``) and the scripted judge served by ``llm`` (generate mode), plus ``overrides``."""
    rules = folder / "rules.json"
    rules.write_text(json.dumps(RULES))
    return compose(
        [
            "stage=reward_server",
            f"paths.root={trained['sft'].parents[1]}",
            f"rules.path={rules}",
            "llm@judge.llm=openai",
            f"judge.llm.base_url={llm.url}/v1",
            "judge.llm.model=scripted-judge",
            "judge.llm.progress=false",
            "judge.mode=generate",
            "reward_server.host=127.0.0.1",
            *overrides,
        ]
    )


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    with FakeLLMServer(ScriptedJudge(RESPONSES, RULES, YES)) as llm:
        cfg = judged_server_config(
            trained,
            tmp_path_factory.mktemp("rules"),
            llm,
            f"grpo.rewards=[{','.join(TERMS)}]",
            f"grpo.reward_weights=[{','.join(map(str, WEIGHTS))}]",
            "reward_server.batch_wait_s=1.0",  # the concurrent posts below share one batch
            "reward_server.max_body_mb=0.01",  # 10 KiB: the oversized request below
            "rewards.rm.dtype=float32",
            "rewards.length_penalty.norm=4",  # every token counts: no special token may stay
        )
        inputs = {"sft": trained["sft"], "rm": trained["rm"]}
        server, funcs, info = reward_server.build_server(cfg, inputs, port=0)
        with server:
            yield {"cfg": cfg, "server": server, "llm": llm, "inputs": inputs, "info": info}
        close_all(funcs)


@pytest.fixture(scope="module")
def expected(served):
    """The weighted reward and the per-rule verdicts computed in-process by the registry."""
    cfg, inputs = served["cfg"], served["inputs"]
    tokenizer = load_tokenizer(cfg, name_or_path=str(inputs["sft"] / "model"))
    context = RewardContext(
        cfg, rm_folder=inputs["rm"], rules=RULES, tokenizer=tokenizer, max_completion_length=64
    )
    funcs = build_reward_funcs(TERMS, context)
    prompts = [PROMPTS[i % 2] for i in range(len(RESPONSES))]
    per_rule = []
    values = [f(prompts, RESPONSES, per_rule=per_rule.append) for f in funcs]
    close_all(funcs)
    total = sum(w * np.asarray(v) for w, v in zip(WEIGHTS, values, strict=True))
    return {"rewards": total, "terms": dict(zip(TERMS, values, strict=True)), "rules": per_rule[0]}


def queries(tokenizer, pad: int = 2) -> list[str]:
    """What OpenRLHF posts: the prompt left-padded, the response, eos and right padding, decoded
    with the special tokens kept."""
    padding = tokenizer.pad_token * pad
    return [
        padding + PROMPTS[i % 2] + response + tokenizer.eos_token + padding
        for i, response in enumerate(RESPONSES)
    ]


def tokenizer_of(served):
    return load_tokenizer(served["cfg"], name_or_path=str(served["inputs"]["sft"] / "model"))


def test_openrlhf_paper_era_client_gets_the_registry_rewards(served, expected):
    # OpenRLHF's own client (make install adds openrlhf 0.6.4, which has wheels for Python
    # 3.10 and 3.11 only).
    client = pytest.importorskip("openrlhf.utils.remote_rm_utils", reason="openrlhf not installed")
    remote_rm_fn = client.remote_rm_fn

    posted = queries(tokenizer_of(served))
    prompts = [PROMPTS[i % 2] for i in range(len(RESPONSES))]
    rewards = remote_rm_fn(served["server"].url(), posted, prompts, [None] * len(posted))
    assert rewards.shape == (len(RESPONSES),)
    np.testing.assert_allclose(rewards.numpy(), expected["rewards"], rtol=1e-5, atol=1e-5)
    # The judge said what the script says, so the rules term is not a constant.
    satisfied = expected["rules"]
    assert satisfied.tolist() == [[(r, rule) in YES for rule in RULES] for r in RESPONSES]


def test_current_client_one_post_per_response_shares_one_judge_batch(served, expected):
    """OpenRLHF >= 0.9 posts each response on its own, all at once: the server scores them as
    one batch and returns each one's extra logs (terms, per-rule satisfaction)."""
    import aiohttp

    server, llm = served["server"], served["llm"]
    posted = queries(tokenizer_of(served), pad=0)
    prompts = [PROMPTS[i % 2] for i in range(len(RESPONSES))]

    async def post_all():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:

            async def post(i):
                payload = {"query": [posted[i]], "prompts": [prompts[i]], "labels": [None]}
                async with session.post(server.url(), json=payload) as response:
                    response.raise_for_status()
                    return await response.json()

            return await asyncio.gather(*(post(i) for i in range(len(posted))))

    batches, calls = server.batcher.batches, len(llm.requests)
    answers = asyncio.run(post_all())
    assert server.batcher.batches == batches + 1  # four requests, one batch
    assert len(llm.requests) == calls + len(RESPONSES) * len(RULES)
    for i, answer in enumerate(answers):
        assert set(answer) == {"rewards", "scores", "extra_logs"}
        assert answer["rewards"] == answer["scores"]
        assert answer["rewards"][0] == pytest.approx(expected["rewards"][i], abs=1e-5)
        logs = answer["extra_logs"]
        for term in TERMS:
            assert logs[term][0] == pytest.approx(expected["terms"][term][i], abs=1e-5)
        for j in range(len(RULES)):
            assert logs[f"rules/{j}"] == [float((RESPONSES[i], RULES[j]) in YES)]
        assert logs["judge/failed"] == [0.0]


def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(served, expected):
    server, llm = served["server"], served["llm"]
    url = server.url()
    good = {"query": [PROMPTS[0] + RESPONSES[0]], "prompts": [PROMPTS[0]], "labels": [None]}
    bad = [
        (b"not json", 400, "not JSON"),
        (json.dumps([1, 2]).encode(), 400, "JSON object"),
        (json.dumps({"queries": ["x"], "prompts": ["x"]}).encode(), 400, "unknown field"),
        (json.dumps({"prompts": ["x"]}).encode(), 400, "missing field(s) ['query']"),
        (json.dumps({"query": [], "prompts": []}).encode(), 400, "empty list"),
        (json.dumps({"query": "x", "prompts": ["x"]}).encode(), 400, "must be a list"),
        (json.dumps({"query": [3], "prompts": ["x"]}).encode(), 400, "query[0] must be a string"),
        (json.dumps({**good, "prompts": PROMPTS}).encode(), 400, "1 queries but 2 prompts"),
        (json.dumps({**good, "labels": [None, None]}).encode(), 400, "1 queries but 2 labels"),
        (json.dumps({**good, "prompts": ["elsewhere"]}).encode(), 400, "does not hold its prompt"),
        (b"{" + b" " * 20_000 + b"}", 413, "reward_server.max_body_mb"),
    ]
    calls = len(llm.requests)
    for body, status, message in bad:
        response = requests.post(
            url, data=body, headers={"Content-Type": "application/json"}, timeout=30
        )
        assert response.status_code == status, body[:60]
        assert message in response.json()["error"], response.json()
        # A distinct body each time (answers are kept by body): each is scored.
        retry = {**good, "labels": [f"after {status} {message}"]}
        assert requests.post(url, json=retry, timeout=60).status_code == 200
    assert requests.get(url.rsplit("/", 1)[0] + "/nowhere", timeout=10).status_code == 404
    # Only the good requests reached the judge (each one response x two rules).
    assert len(llm.requests) == calls + len(bad) * len(RULES)
    health = requests.get(url.rsplit("/", 1)[0] + "/health", timeout=10).json()
    assert health["terms"] == TERMS and health["requests"]["refused"] >= len(bad)


def test_a_failing_term_answers_500_and_the_next_batch_is_served(served):
    server = served["server"]
    score = server.batcher.score
    server.batcher.score = lambda prompts, responses: 1 / 0
    try:
        good = {"query": [PROMPTS[0] + RESPONSES[1]], "prompts": [PROMPTS[0]]}
        response = requests.post(server.url(), json=good, timeout=30)
        assert response.status_code == 500 and "ZeroDivisionError" in response.json()["error"]
    finally:
        server.batcher.score = score
    assert requests.post(server.url(), json=good, timeout=60).status_code == 200


def test_the_cli_says_where_it_listens_and_stops_cleanly_on_sigint(trained):
    import re
    import signal
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "autorule",
        "stage=reward_server",
        f"paths.root={trained['sft'].parents[1]}",
        "grpo.rewards=[length_penalty]",
        "rewards.length_penalty.coef=0.25",  # an artifact of its own
        "reward_server.host=127.0.0.1",
        "reward_server.port=0",  # any free port: the printed URL says which
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        while line and "reward server:" not in line:
            line = server.stdout.readline()
        listening = re.search(r" on (http://\S+) ", line)
        assert listening, (line, server.stderr.read() if server.poll() is not None else "")
        good = {"query": [PROMPTS[0] + RESPONSES[1]], "prompts": [PROMPTS[0]]}
        answer = requests.post(listening.group(1), json=good, timeout=60).json()
        assert set(answer["extra_logs"]) == {"length_penalty", "length/tokens"}
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert "reward server stopped ({'ok': 1, 'refused': 0, 'failed': 0, 'reused': 0})" in out


def test_the_sessions_llm_usage_counts_the_judges_calls(trained, tmp_path):
    """A served rules term: the session folder of the artifact gets one score row per batch and
    an llm_usage.json whose judge calls are the calls the judge server saw."""
    from autorule.rewards import score_log

    with FakeLLMServer(ScriptedJudge(RESPONSES, RULES, YES)) as llm:
        cfg = judged_server_config(
            trained,
            tmp_path,
            llm,
            "grpo.rewards=[rules]",
            "judge.llm.cache=false",  # every verdict is a call to the server
        )
        path, inputs = reward_server.prepare(cfg)
        server, funcs, info = reward_server.build_server(cfg, inputs, port=0, artifact=path)
        with server:
            for i, response in enumerate(RESPONSES):
                prompt = PROMPTS[i % 2]
                request = {"query": [prompt + response], "prompts": [prompt]}
                assert requests.post(server.url(), json=request, timeout=60).status_code == 200
        close_all(funcs)
        calls = len(llm.requests)
    assert calls == len(RESPONSES) * len(RULES)
    folder = path / "sessions" / info["session"]
    usage = json.loads((folder / "llm_usage.json").read_text())
    assert usage["judge.llm"]["calls"] == calls and usage["judge.llm"]["failed_calls"] == 0
    rows = score_log.read_sessions(path)
    assert [row["completions"] for row in rows] == [1] * len(RESPONSES)
    for row, response in zip(rows, RESPONSES, strict=True):
        assert row["rules/0"] == float((response, RULES[0]) in YES)
