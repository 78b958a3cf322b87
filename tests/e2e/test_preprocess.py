"""The preprocess stage end to end on the tiny profile, in-process and through the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from autorule.artifacts import read_manifest
from autorule.filters import REASONS
from autorule.models import load_tokenizer
from autorule.stages import preprocess

pytestmark = pytest.mark.slow
UF_SPLITS = ["train_sft", "test_sft", "train_prefs", "test_prefs"]


def test_uf_outputs_obey_the_filter_and_counts_match(make_cfg):
    cfg = make_cfg("preprocess.test_subset_size=50")
    out = preprocess.run(cfg)
    m = read_manifest(out)
    assert m["status"] == "complete"
    tok = load_tokenizer(cfg)
    for split in UF_SPLITS:
        df = pd.read_parquet(out / f"{split}.parquet")
        c = m["counts"]
        dropped = {r: c[f"{split}_dropped_{r}"] for r in REASONS}
        assert c[f"{split}_rows"] == len(df)
        assert c[f"{split}_rows_in"] - len(df) == sum(dropped.values())
        if split.startswith("train"):  # the bundled data holds rows for every reason
            assert all(n > 0 for n in dropped.values()), dropped
        # What survived really obeys the filter, checked directly with the policy tokenizer.
        assert (df["score_chosen"] > df["score_rejected"]).all()
        for col in ("prompt", "chosen_content", "rejected_content"):
            lengths = [len(x) for x in tok(df[col].tolist(), add_special_tokens=False).input_ids]
            assert max(lengths) < 512
        assert not df["chosen_content"].str.lower().str.contains("confidence").any()
        assert not df["rejected_content"].str.lower().str.contains("confidence").any()
        # Added columns follow the paper's format; the message lists stay.
        row = df.iloc[0]
        assert row["formatted_prompt"] == f"<|user|>{row['prompt']}<|assistant|>"
        assert row["chosen_content"] == row["chosen"][-1]["content"] == row["response"]
        assert row["rejected_content"] == row["rejected"][-1]["content"]
    subset = pd.read_parquet(out / "test_subset.parquet")
    test_prefs = pd.read_parquet(out / "test_prefs.parquet")
    assert len(subset) == m["counts"]["test_subset_rows"] == 50
    assert subset["prompt_id"].tolist() == test_prefs["prompt_id"].head(50).tolist()


def test_chat_template_switch(make_cfg):
    out = preprocess.run(make_cfg("preprocess.prompt_format=chat_template"))
    row = pd.read_parquet(out / "test_prefs.parquet").iloc[0]
    assert row["formatted_prompt"] == f"<|user|>{row['prompt']}<|assistant|>"


def test_filter_switches_keep_everything(make_cfg):
    cfg = make_cfg(
        "preprocess.filter.length=false",
        "preprocess.filter.score=false",
        "preprocess.filter.no_confidence=false",
    )
    c = read_manifest(preprocess.run(cfg))["counts"]
    assert all(c[f"{s}_rows"] == c[f"{s}_rows_in"] for s in UF_SPLITS)


@pytest.mark.parametrize("bug", [False, True])
def test_mt_split(make_cfg, bug):
    cfg = make_cfg("dataset=mt", f"preprocess.mt_first_question_only={str(bug).lower()}")
    out = preprocess.run(cfg)
    train = pd.read_parquet(out / "train.parquet")
    test = pd.read_parquet(out / "test.parquet")
    assert not train["winner"].str.startswith("tie").any()
    assert not test["winner"].str.startswith("tie").any()
    expected_train = (
        {81, 91, 101, 111, 121, 131, 141, 151}
        if bug
        else {q for b in range(81, 161, 10) for q in range(b, b + 5)}
    )
    assert set(train["question_id"]) == expected_train
    assert set(test["question_id"]) == {q for b in range(86, 161, 10) for q in range(b, b + 5)}
    c = read_manifest(out)["counts"]
    assert c["rows_in"] == c["dropped_tie"] + c["dropped_unassigned_question"] + len(train) + len(
        test
    )
    assert c["dropped_tie"] > 0


def test_missing_split_is_a_clear_error(make_cfg, tmp_path):
    cfg = make_cfg(f"dataset.path={tmp_path / 'nowhere'}")
    with pytest.raises((FileNotFoundError, ValueError), match="dataset.path="):
        preprocess.run(cfg)


def test_cli_end_to_end_without_secrets(tmp_path):
    """``python -m autorule stage=preprocess`` in a subprocess; secrets never reach the disk."""
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    env = {
        **os.environ,
        "AWS_SECRET_ACCESS_KEY": secret,
        "OPENAI_API_KEY": "sk-test-abcdefghijklmnopqrstuvwxyz",
    }
    root = tmp_path / "root"
    local_copy = Path(__file__).resolve().parents[2] / "data" / "ultrafeedback_binarized"
    cmd = [
        sys.executable,
        "-m",
        "autorule",
        "stage=preprocess",
        "dataset=uf",
        f"dataset.path={local_copy}",
        f"paths.root={root}",
        "+notes.api_key=AKIAABCDEFGHIJKLMNOP",
    ]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "profile=tiny" in first.stderr  # the banner
    (out,) = (root / "preprocess").glob("uf-*")
    assert f"preprocess: {out}" in first.stdout
    assert sorted(p.name for p in out.glob("*.parquet")) == sorted(
        [f"{s}.parquet" for s in UF_SPLITS] + ["test_subset.parquet"]
    )
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["counts"]["train_prefs_rows"] > 0
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "nothing to do" in second.stdout + second.stderr
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".yaml", ".log", ".txt", ""}:
            text = path.read_text(errors="ignore")
            for needle in (secret, "AKIAABCDEFGHIJKLMNOP", "sk-test-abcdefghij"):
                assert needle not in text, f"{needle[:6]}... leaked into {path}"
    for stream in (first.stdout, first.stderr, second.stdout, second.stderr):
        assert "AKIAABCDEFGHIJKLMNOP" not in stream


def test_missing_input_from_the_cli_names_the_command(tmp_path):
    """A downstream stage started too early fails fast with the command that makes its input."""
    from autorule.artifacts import StageInputError, StageJob
    from autorule.config import compose
    from autorule.stages import SPECS, StageSpec

    SPECS["toy_after_preprocess"] = StageSpec(inputs=("preprocess",), keys=("seed",))
    try:
        cfg = compose([f"paths.root={tmp_path}", "dataset=mt"])
        with pytest.raises(StageInputError, match="python -m autorule stage=preprocess"):
            StageJob(cfg, "toy_after_preprocess")
    finally:
        del SPECS["toy_after_preprocess"]
