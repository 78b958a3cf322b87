"""Writing a benchmark's figures into its own section of docs/benchmarks.md (between markers)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def write_section(marker: str, title: str, section: str, doc: Path = DOC) -> None:
    """Replaces the text between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` with
    ``section``, or appends it under a ``## title`` heading when the markers are not there yet."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    block = f"{start}\n{section}\n{end}"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if start in text:
        pattern = re.escape(start) + ".*?" + re.escape(end)
        text = re.sub(pattern, lambda m: block, text, flags=re.DOTALL)
    else:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n{block}\n"
    doc.parent.mkdir(exist_ok=True)
    doc.write_text(text)
