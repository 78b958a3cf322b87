"""Reading rule lists out of awkward model output (literal inputs only)."""

import os

import pytest

from autorule.llm.reasoning import split_reasoning
from autorule.rules.parsing import bracket_spans, parse_rules

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
    ("No rule applies here: []. Neither answer is better.", []),  # only empty lists: no rules
    # An empty list mentioned after the answer is not the answer.
    ('["Be concise."]\nand the rejected one has []', ["Be concise."]),
    ('```json\n["Be concise."]\n```\n```json\n[]\n```', ["Be concise."]),
    # Drafts first, the final list last: the last non-empty list wins...
    (
        'Draft: ["Be concise."]\nRevised: ["Be concise.", "Cite sources."]',
        ["Be concise.", "Cite sources."],
    ),
    # ...unless a list is labelled final: an afterthought after it ("also consider") is not the
    # answer. Unlabelled, the afterthought would win (see test_unlabelled_afterthought_wins).
    ('Final: ["a", "b"]\nAlso consider ["maybe"]', ["a", "b"]),
    (
        'Final answer:\n```json\n["a", "b"]\n```\nAlso consider:\n```json\n["maybe"]\n```',
        ["a", "b"],
    ),
    # Cut off by the token budget: the items that arrived whole are kept.
    ('["a", "b", "c is cut', ["a", "b"]),
    ('Here: ["a", "b",', ["a", "b"]),
    ('[{"rule":"a"}, {"rule":"b"', ["a"]),
    ("['a', 'b', 'c is cu", ["a", "b"]),
    ('```json\n[\n  "a",\n  "b"', ["a", "b"]),
    ('Draft: ["x"]\nFinal: ["a", "b", "c is cu', ["a", "b"]),  # the cut list is the last one
]


@pytest.mark.parametrize(("text", "expected"), CORPUS)
def test_awkward_outputs_parse(text, expected):
    parsed = parse_rules(text)
    assert parsed.ok, parsed.error
    assert parsed.rules == expected


@pytest.mark.parametrize(
    "text",
    ['["a", "b", "c is cut', 'Here: ["a", "b",', '[{"rule":"a"}, {"rule":"b"', '```json\n["a",'],
)
def test_cut_off_lists_are_flagged(text):
    parsed = parse_rules(text)
    assert parsed.ok and parsed.truncated and "cut off" in parsed.warnings[0]
    assert not parse_rules('["a", "b"]').truncated


def test_unlabelled_afterthought_wins():
    # Ambiguous: a draft-then-final answer and an answer-then-afterthought look alike. Reasoning
    # models draft in the answer more often than they add afterthoughts, so the last list wins;
    # the warning records that another list was passed over.
    parsed = parse_rules('Rules: ["a", "b"]\nAlso consider ["maybe"]')
    assert parsed.rules == ["maybe"]
    assert parsed.warnings == [
        "2 non-empty lists in the answer; took the last one (at character 32)"
    ]


def test_bullet_lists_are_read_unless_they_follow_a_refusal():
    assert parse_rules("Rules:\n- Be concise.\n- Cite sources.").rules == [
        "Be concise.",
        "Cite sources.",
    ]
    for refusal in (
        "I can't comply because:\n- it is harmful\n- policy",
        "I\u2019m sorry, but I cannot do this:\n1. it is unsafe\n2. it breaks the rules",
        "Unable to comply. Reasons:\n* policy",
    ):
        parsed = parse_rules(refusal)
        assert not parsed.ok and parsed.rules == [] and "refusal" in parsed.error


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
        "I can't comply because:\n- it is harmful\n- policy",
        '["a',  # cut off before any item was whole
    ],
)
def test_unparseable_outputs_report_an_error(text):
    parsed = parse_rules(text)
    assert not parsed.ok and parsed.error and parsed.rules == []


# Payloads that evaluation would turn into valid lists of strings, so a parser that eval()s them
# would return them as rules; two also leave a file behind ({sentinel} is filled in).
EVAL_PAYLOADS = [
    "[__import__('os').getcwd()]",
    "[open({sentinel!r}, 'w').write('x') and 'pwned']",
    "```python\n[str(__import__('pathlib').Path({sentinel!r}).touch())]\n```",
]


@pytest.mark.parametrize("payload", EVAL_PAYLOADS)
def test_never_executes_model_output(tmp_path, payload):
    sentinel = tmp_path / "executed"
    parsed = parse_rules(payload.format(sentinel=str(sentinel)))
    assert not sentinel.exists()
    assert not parsed.ok and parsed.rules == [], parsed
    assert os.getcwd() not in str(parsed)


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
