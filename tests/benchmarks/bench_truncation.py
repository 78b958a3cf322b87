"""What the judge's truncation does to long responses: the released cut as a length penalty.

    python -m pytest -q -m bench -s tests/benchmarks/bench_truncation.py

The tiny profile's judge settings with the paper prompt set (``prompts/judge@judge.prompts=paper``)
and the paper's budget (``judge.max_input_tokens=1024``, counted with the tiny tokenizer), against
a scripted served judge (tests/fakeserver.py, through the real openai client) that says
``[[Yes]]`` to every rule whenever it can read the question, i.e. whenever the prompt still ends
with the closing instruction; a prompt that lost it gets an answer with no verdict, as a real
judge continuing a cut prompt writes on instead of answering. Responses of growing length (the
bundled chosen answers, repeated to length) are judged under ``judge.truncation=released`` and
``inside_response``; the share of rules satisfied per length bucket is the curve. Every rule is
"satisfied" by construction, so anything below 1.0 is the truncation alone.

The figures are printed; with ``AUTORULE_BENCH_WRITE_DOCS=1`` they are also written into
docs/benchmarks.md ("Judge truncation as a length penalty").
"""

from __future__ import annotations

import os

import pandas as pd
import pytest
from benchdoc import write_section

from autorule.core.config import REPO_ROOT, compose
from autorule.rewards import RuleJudge
from fakeserver import FakeLLMServer, FakeReply

RULES = [
    "The response answers the question that was asked.",
    "The response stays on topic.",
    "The response uses a polite and respectful tone.",
    "The response avoids needless repetition.",
    "The response gives concrete examples where they help.",
]
BUCKETS = [(0, 256), (256, 512), (512, 640), (640, 768), (768, 1024), (1024, 2048), (2048, 4096)]
PER_BUCKET = 6
BUDGET = 1024
QUESTION = 'Reply with exactly one of "[[Yes]]" or "[[No]]" and nothing else.'


def yes_when_asked(request) -> FakeReply:
    if request.prompt.rstrip().endswith(QUESTION):
        return FakeReply(text="[[Yes]]")
    return FakeReply(text="and the text goes on in the same way without a verdict")


def responses(tokenizer) -> list[tuple[int, str]]:
    """(tokens, text) of responses filling each bucket, from the bundled chosen answers."""
    path = REPO_ROOT / "data" / "ultrafeedback_binarized" / "data"
    df = pd.read_parquet(sorted(path.glob("test_prefs-*.parquet"))[0], columns=["chosen"])
    answers = [row[-1]["content"] for row in df["chosen"].head(PER_BUCKET * len(BUCKETS))]
    out = []
    for k, (low, high) in enumerate(BUCKETS):
        for j in range(PER_BUCKET):
            text = answers[(k * PER_BUCKET + j) % len(answers)]
            target = low + (high - low) * (j + 1) // (PER_BUCKET + 1)
            while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < target:
                text = text + "\n\n" + text
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][:target]
            out.append((target, tokenizer.decode(ids)))
    return out


@pytest.mark.bench
def test_released_truncation_is_a_length_penalty(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-bench-0000000000000000")
    rows = []
    with FakeLLMServer(yes_when_asked) as server:
        for truncation in ("released", "inside_response"):
            cfg = compose(
                [
                    f"paths.root={tmp_path}",
                    "prompts/judge@judge.prompts=paper",
                    "judge.mode=generate",
                    "judge.parse=contains",
                    f"judge.truncation={truncation}",
                    f"judge.max_input_tokens={BUDGET}",
                    "judge.tokenizer=tiny",
                    "llm@judge.llm=openai",
                    f"judge.llm.base_url={server.url}/v1",
                    "judge.llm.model=scripted-judge",
                    "judge.llm.progress=false",
                ]
            )
            judge = RuleJudge(cfg)
            items = responses(judge.tokenizer)
            result = judge.judge(
                [t for _, t in items], RULES, prompts=["Tell me more."] * len(items)
            )
            for (tokens, _), row in zip(items, result.decisions, strict=True):
                rows.append({"truncation": truncation, "tokens": tokens, "share": row.mean()})
    df = pd.DataFrame(rows)
    df["bucket"] = pd.cut(df["tokens"], [b[0] for b in BUCKETS] + [BUCKETS[-1][1]], right=False)
    curve = df.pivot_table(index="bucket", columns="truncation", values="share", observed=True)
    print("\nshare of rules satisfied by response length (judge tokens):\n", curve.to_string())
    assert (curve["inside_response"] == 1.0).all()
    assert curve["released"].iloc[0] == 1.0 and curve["released"].iloc[-1] == 0.0
    if os.environ.get("AUTORULE_BENCH_WRITE_DOCS"):
        lines = [
            "| Response length (judge tokens) | `released` | `inside_response` |",
            "|---|---|---|",
            *(
                f"| {b.left}-{b.right} | {r['released']:.2f} | {r['inside_response']:.2f} |"
                for b, r in curve.iterrows()
            ),
        ]
        write_section(
            "truncation",
            "Judge truncation as a length penalty",
            "Command: `python -m pytest -q -m bench -s tests/benchmarks/bench_truncation.py` "
            "(`AUTORULE_BENCH_WRITE_DOCS=1` rewrites this table). A scripted judge says yes to "
            f"every rule it can read the question for; {len(RULES)} rules, {PER_BUCKET} responses "
            f"per bucket, the paper prompt set, `judge.max_input_tokens={BUDGET}` counted with "
            "the tiny tokenizer (its prompt frame takes about 330 tokens, so the cut reaches the "
            "question past about 690 response tokens). The figures are counts, the same on any "
            "machine. Share of rules satisfied:\n\n" + "\n".join(lines),
        )
