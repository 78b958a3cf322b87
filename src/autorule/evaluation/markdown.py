"""Model text made safe to paste into a Markdown report.

Rules, flag messages and anything else an LLM wrote are untrusted input: pasted raw, a ``|``
shifts a table's columns, a newline followed by ``##`` starts a heading, ``<script>`` or
``<img onerror=...>`` runs in an HTML preview, and ``![](http://...)`` makes the reader's viewer
fetch a remote image. :func:`markdown_text` turns such text into one line of plain text that
renders as what was written:

* white space, newlines included, collapses to single spaces (no new line, so no heading, list
  or quote can start inside it, and a table row stays one row);
* backslashes are doubled first, so the text cannot undo the escapes that follow;
* ``&``, ``<`` and ``>`` become HTML entities: no tag survives, and the text still reads ``<b>``;
* ``|``, ``[``, ``]`` and a leading ``#`` are backslash-escaped: no cell break, no link or image,
  no heading.

:func:`markdown_code` does the same for a value shown as inline code (a model name, a path).
"""

from __future__ import annotations

from typing import Any

_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_ESCAPED = "|[]"


def markdown_text(value: Any) -> str:
    """``value`` as one line of Markdown text that renders as written (see the module
    docstring); safe inside a table cell."""
    text = " ".join(str(value).split()).replace("\\", "\\\\")
    text = "".join(_ENTITIES.get(c, f"\\{c}" if c in _ESCAPED else c) for c in text)
    return "\\" + text if text.startswith("#") else text


def markdown_code(value: Any) -> str:
    """``value`` as inline code on one line, safe inside a table cell: backticks (which would
    close the span) become quotes, and ``|`` is escaped (GitHub splits cells before it reads
    code spans)."""
    text = " ".join(str(value).split()).replace("`", "'").replace("|", "\\|")
    return f"`{text}`"
