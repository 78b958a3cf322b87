"""The report from a literal evaluate artifact: model text is escaped, a damaged file is named."""

import json

import numpy as np
import pytest

from autorule.core.artifacts import StageInputError
from autorule.evaluation import agreement
from autorule.stages import report

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
