"""The redacting artifact writers on literal rows: what reaches the disk holds no secret, and
everything else is written unchanged."""

import json

import pandas as pd
import pytest

from autorule.core import files
from autorule.core.secrets import MASK, add_known_secret

SECRET = "gateway-key-4nTq8Zr2Lw"  # no credential shape: masked because it is registered


@pytest.fixture(autouse=True)
def registered():
    add_known_secret(SECRET)


def test_parquet_cells_are_redacted_whatever_their_dtype(tmp_path):
    frame = pd.DataFrame(
        {
            "answer": [f"echo: Bearer {SECRET}", "fine"],  # str dtype (pandas 3) or object
            "nested": [[f"x {SECRET}"], ["y"]],
            "rating": pd.array([4, None], dtype="Int64"),
        }
    )
    files.write_parquet_redacted(tmp_path / "t.parquet", frame)
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert back["answer"].tolist() == [f"echo: Bearer {MASK}", "fine"]
    assert [list(v) for v in back["nested"]] == [[f"x {MASK}"], ["y"]]
    assert back["rating"].tolist()[0] == 4 and pd.isna(back["rating"].tolist()[1])
    assert frame["answer"][0].endswith(SECRET), "the caller's frame is left as it was"


def test_json_lines_json_and_text_are_redacted(tmp_path):
    rows = [{"text": f"key {SECRET}", "n": 1}, {"text": "plain", "api_key": "abcdefgh12345"}]
    assert files.write_jsonl(tmp_path / "r.jsonl", rows) == 2
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert lines == [{"text": f"key {MASK}", "n": 1}, {"text": "plain", "api_key": MASK}]
    files.write_json_redacted(tmp_path / "m.json", {"note": SECRET})
    assert json.loads((tmp_path / "m.json").read_text()) == {"note": MASK}
    files.write_text_redacted(tmp_path / "r.md", f"| rule | {SECRET} |\n")
    assert (tmp_path / "r.md").read_text() == f"| rule | {MASK} |\n"
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"
