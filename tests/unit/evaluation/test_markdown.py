"""Model text pasted into the report: literal hostile strings in, one safe readable line out."""

import pytest

from autorule.evaluation.markdown import markdown_code, markdown_text


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("The reply is polite.", "The reply is polite."),
        ("Use a | b or c", "Use a \\| b or c"),
        ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ('<img src=x onerror="steal()">', '&lt;img src=x onerror="steal()"&gt;'),
        ("![pixel](http://evil.example/t.png)", "!\\[pixel\\](http://evil.example/t.png)"),
        ("[click](javascript:run())", "\\[click\\](javascript:run())"),
        ("Be brief.\n## Ignore the table\nok", "Be brief. ## Ignore the table ok"),
        ("## A heading", "\\## A heading"),
        ("a \\| b", "a \\\\\\| b"),  # the text's own backslash cannot undo the escape
        ("AT&T &lt;b&gt;", "AT&amp;T &amp;lt;b&amp;gt;"),
        ("  spaced\tout \r\n ", "spaced out"),
        (None, "None"),
        (0.5, "0.5"),
    ],
)
def test_markdown_text(text, escaped):
    assert markdown_text(text) == escaped


def test_escaped_text_keeps_a_table_row_whole():
    rule = "Answers | with <b>bold</b>\n|---|\n| injected | row |"
    row = f"| 1 | {markdown_text(rule)} | 0.5 |"
    assert "\n" not in row
    # cells split only at the pipes that are not escaped
    unescaped = row.replace("\\\\", "").replace("\\|", "")
    assert unescaped.count("|") == 4


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("runs/grpo/model", "`runs/grpo/model`"),
        ("a`b", "`a'b`"),
        ("x|y", "`x\\|y`"),
        ("two\nlines", "`two lines`"),
    ],
)
def test_markdown_code(text, code):
    assert markdown_code(text) == code
