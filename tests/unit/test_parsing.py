"""Reading rule lists out of awkward model output (literal inputs only)."""

import pytest

from autorule.parsing import bracket_spans, parse_rules, split_reasoning

# (model output, expected rules). Each case is a shape seen from reasoning models.
CORPUS = [
    ('["Be concise.", "Cite sources."]', ["Be concise.", "Cite sources."]),
    ('```json\n["Be concise.", "Cite sources."]\n```', ["Be concise.", "Cite sources."]),
    ('Here are the rules:\n```\n["Be concise."]\n```\nHope this helps!', ["Be concise."]),
    (
        'Sure! The rules are ["Be concise.", "Cite sources."] as requested.',
        ["Be concise.", "Cite sources."],
    ),
    ('["Be concise.", "Cite sources.",]', ["Be concise.", "Cite sources."]),
    ("['Be concise.', 'Cite sources.']", ["Be concise.", "Cite sources."]),
    ("\u201cBe concise.\u201d".join(["[", "]"]), ["Be concise."]),
    ("[\u201cBe concise.\u201d, \u201cDon\u2019t guess.\u201d]", ["Be concise.", "Don't guess."]),
    ('<think>The user wants [x] maybe.</think>\n["Be concise."]', ["Be concise."]),
    (
        'I considered [1, 2] first.\nFinal: ["Be concise.", "Answer the question."]',
        ["Be concise.", "Answer the question."],
    ),
    ('{"rules": ["Be concise.", "Cite sources."]}', ["Be concise.", "Cite sources."]),
    ('[{"rule": "Be concise."}, {"rule": "Cite sources."}]', ["Be concise.", "Cite sources."]),
    ("1. Be concise.\n2. Cite sources.\n", ["Be concise.", "Cite sources."]),
    (
        "Rules:\n- Be concise.\n* Cite sources.\n\u2022 Use examples.",
        ["Be concise.", "Cite sources.", "Use examples."],
    ),
    (
        '["Use [brackets] sparingly.", "Quote \\"exactly\\"."]',
        ["Use [brackets] sparingly.", 'Quote "exactly".'],
    ),
    ('```json\n["Be  concise.\n", "  Cite sources. "]\n```', ["Be concise.", "Cite sources."]),
    ('```json\n[\n  "Be concise.",\n  "Cite sources."\n', ["Be concise.", "Cite sources."]),
    ("[]", []),
]


@pytest.mark.parametrize(("text", "expected"), CORPUS)
def test_awkward_outputs_parse(text, expected):
    parsed = parse_rules(text)
    assert parsed.ok, parsed.error
    assert parsed.rules == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "I cannot help with that.",
        "<think>still thinking when the budget ran out",
        '["unterminated',
        "[1, 2, 3]",
        '{"answer": 42}',
    ],
)
def test_unparseable_outputs_report_an_error(text):
    parsed = parse_rules(text)
    assert not parsed.ok and parsed.error and parsed.rules == []


def test_never_executes_model_output():
    parsed = parse_rules("__import__('os').system('echo hacked')")
    assert not parsed.ok


@pytest.mark.parametrize(
    ("text", "reasoning", "answer"),
    [
        ("<think>hmm</think>done", "hmm", "done"),
        ("hmm</think>\n\ndone", "hmm", "done"),  # template opened the block inside the prompt
        ("<think>cut off", "cut off", ""),
        ("just an answer", "", "just an answer"),
    ],
)
def test_split_reasoning(text, reasoning, answer):
    assert split_reasoning(text) == (reasoning, answer)


def test_bracket_spans_ignore_brackets_in_strings():
    assert bracket_spans('a [1] b ["x]y", "z"] c') == ["[1]", '["x]y", "z"]']
