"""The report from literal inputs: model text is escaped, a damaged file is named, the table of
what each stage's LLM roles cost is priced."""

import json

import numpy as np
import pytest

from autorule.core.artifacts import StageInputError
from autorule.evaluation import agreement
from autorule.stages import report
from autorule.stages.report import usage_section

HOSTILE = [
    "Answers | with a pipe",
    "Stays safe <script>alert(1)</script>",
    'Shows <img src=x onerror="steal()"> nothing',
    "Cites ![pixel](http://evil.example/t.png) sources",
    "Is brief.\n## Injected heading",
    "Quotes prices as $\\frac{1$ dollars",  # unbalanced math for matplotlib's labels
]


def evaluate_artifact(folder):
    """An evaluate artifact with only what the report reads: metrics, rule agreement."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    chosen, rejected = rng.random((6, len(HOSTILE))) > 0.5, rng.random((6, len(HOSTILE))) > 0.5
    found = {
        "split": "test_prefs",
        "overall": agreement.overall(chosen, rejected),
        "unparsed": 0,
        "failed": 0,
        "verdicts": 2 * 6 * len(HOSTILE),
        "rules": [r.as_dict() for r in agreement.per_rule(HOSTILE, chosen, rejected)],
    }
    metrics = {"model": "grpo|x", "reference": "sft", "win_rate": None, "lengths": {}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "rule_agreement.json").write_text(json.dumps(found))
    return folder


def test_rules_written_by_an_llm_cannot_change_the_reports_markdown(make_cfg, tmp_path):
    evaluated = evaluate_artifact(tmp_path / "evaluate")
    text = report.render(make_cfg("stage=report"), evaluated, tmp_path / "out")
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith("| ") and line[2:3].isdigit()]
    assert len(rows) == len(HOSTILE)  # one row per rule, none added by the rule text
    for row in rows:  # 8 columns: 9 pipes that are not escaped
        assert row.replace("\\\\", "").replace("\\|", "").count("|") == 9, row
    assert "<script>" not in text and "<img" not in text and "![pixel](" not in text
    assert [line for line in lines if line.startswith("#")] == [
        "# autorule evaluation report",
        "## LLM calls and cost",
        "## Win rate over the reference",
        "## Response lengths",
        "## Rule agreement with human preferences",
        "## Reward hacking",
        "### Reward curves per term",
        "### Rule satisfaction over training",
        "### RM score and win rate over checkpoints",
        "## AlpacaEval 2.0 and MT-Bench",
    ]
    png = tmp_path / "out" / "plots" / "rule_agreement.png"
    assert f"(plots/{png.name})" in text and png.read_bytes()[:4] == b"\x89PNG"
    # still readable: the words are there, escaped rather than dropped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "Answers \\| with a pipe" in text and "Is brief. ## Injected heading" in text


@pytest.mark.parametrize("damage", [b"{not json", b"\xff\xfe\x00binary"])
def test_a_damaged_metrics_file_is_named_with_the_command_that_rewrites_it(
    make_cfg, tmp_path, damage
):
    evaluated = evaluate_artifact(tmp_path / "evaluate")
    (evaluated / "metrics.json").write_bytes(damage)
    with pytest.raises(StageInputError) as err:
        report.render(make_cfg("stage=report"), evaluated, tmp_path / "out")
    assert str(evaluated / "metrics.json") in str(err.value)
    assert "stage=evaluate force=true" in str(err.value)


RECORD = {
    "calls": 10,
    "cache_hits": 2,
    "failed_calls": 1,
    "empty_answers": 0,
    "input_tokens": 4000,
    "output_tokens": 500,
    "unknown_token_calls": 0,
    "latency_p50_s": 0.25,
    "latency_p95_s": 1.5,
    "cost_usd": None,
}


def test_the_cost_table_prices_a_record_with_the_roles_price(make_cfg):
    cfg = make_cfg("judge.llm.price.input=2.5", "judge.llm.price.output=10")
    unknown = {**RECORD, "input_tokens": None, "output_tokens": None, "unknown_token_calls": 7}
    lines = usage_section([("grpo", "judge.llm", RECORD), ("evaluate", "judge.llm", unknown)], cfg)
    text = "\n".join(lines)
    # (4000 x 2.5 + 500 x 10) / 1e6
    assert "| grpo | `judge.llm` | 10 | 2 | 1 | 0 | 4000 | 500 | 0.250 | 1.500 | 0.0150 |" in text
    assert "| evaluate | `judge.llm` | 10 | 2 | 1 | 0 | unknown | unknown |" in text
    assert text.count("n/a |") == 1  # unknown tokens: no estimate
    assert "No stage of this run called an LLM role." in "\n".join(usage_section([], cfg))
