"""The report's table of what each stage's LLM roles cost, on literal usage records."""

from autorule.stages.report import usage_section

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
