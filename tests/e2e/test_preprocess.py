"""The preprocess stage end to end on the tiny profile, in-process and through the CLI."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf.errors import InterpolationResolutionError

from autorule.core.artifacts import StageInputError, is_up_to_date, read_manifest
from autorule.core.config import ConfigError, compose
from autorule.data.filters import REASONS
from autorule.data.models import load_tokenizer
from autorule.data.token_counts import PieceCounter, token_lengths
from autorule.pipeline import run_stage
from autorule.stages import preprocess, sft

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
    # train_prefs is also kept whole, for extract.pool=unfiltered (the released code's pool).
    whole = pd.read_parquet(out / "train_prefs_unfiltered.parquet")
    raw = pd.read_parquet(Path(cfg.dataset.path) / "data/train_prefs-00000-of-00001.parquet")
    assert whole["prompt_id"].tolist() == raw["prompt_id"].tolist()
    assert len(whole) == m["counts"]["train_prefs_rows_in"] > m["counts"]["train_prefs_rows"]
    assert not (out / "train_sft_unfiltered.parquet").exists()
    subset = pd.read_parquet(out / "test_subset.parquet")
    test_prefs = pd.read_parquet(out / "test_prefs.parquet")
    assert len(subset) == m["counts"]["test_subset_rows"] == 50
    assert subset["prompt_id"].tolist() == test_prefs["prompt_id"].head(50).tolist()


@pytest.mark.parametrize("fmt", ["plain", "chat_template"])
def test_prompt_format_switch(make_cfg, fmt):
    """plain uses preprocess.plain_template; chat_template ignores it and asks the tokenizer."""
    cfg = make_cfg(f"preprocess.prompt_format={fmt}", "preprocess.plain_template='Q: {prompt} A:'")
    out = preprocess.run(cfg)
    row = pd.read_parquet(out / "test_prefs.parquet").iloc[0]
    if fmt == "plain":
        assert row["formatted_prompt"] == f"Q: {row['prompt']} A:"
    else:
        expected = load_tokenizer(cfg).apply_chat_template(
            [{"role": "user", "content": row["prompt"]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        assert row["formatted_prompt"] == expected


def test_a_column_missing_from_one_file_is_an_error_not_dropped_rows(make_cfg, tmp_path):
    """A column one split's file lacks is refused, naming the split and the file, instead of
    committing a split the score filter emptied (datasets would fill the column with nulls)."""
    import shutil

    copy = tmp_path / "uf"
    shutil.copytree(make_cfg().dataset.path, copy)
    f = copy / "data" / "test_sft-00000-of-00001.parquet"
    pd.read_parquet(f).drop(columns=["score_rejected"]).to_parquet(f)
    cfg = make_cfg(f"dataset.path={copy}")
    with pytest.raises(
        ValueError, match=r"split test_sft .*test_sft-00000.*lacks the columns \['score_rejected'\]"
    ):
        preprocess.run(cfg)
    assert not any((tmp_path / "out" / "preprocess").glob("uf-*"))


def test_a_filter_that_empties_a_split_stops_the_stage(make_cfg):
    cfg = make_cfg("preprocess.filter.max_tokens=1")
    with pytest.raises(ValueError, match="dropped all .* rows of split train_sft"):
        preprocess.run(cfg)


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
    expected_test = (
        {86, 96, 106, 116, 126, 136, 146, 156}
        if bug
        else {q for b in range(86, 161, 10) for q in range(b, b + 5)}
    )
    assert set(train["question_id"]) == expected_train
    assert set(test["question_id"]) == expected_test
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
        "+notes.api_key_env=OPENAI_API_KEY",  # naming the variable is fine: it holds no secret
    ]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "profile=tiny" in first.stderr  # the banner
    (out,) = (root / "preprocess").glob("uf-*")
    assert f"preprocess: {out}" in first.stdout
    assert sorted(p.name for p in out.glob("*.parquet")) == sorted(
        [f"{s}.parquet" for s in UF_SPLITS]
        + ["test_subset.parquet", "train_prefs_unfiltered.parquet"]
    )
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["counts"]["train_prefs_rows"] > 0
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "nothing to do" in second.stdout + second.stderr
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".yaml", ".log", ".txt", ""}:
            text = path.read_text(errors="ignore")
            for needle in (secret, "sk-test-abcdefghij"):
                assert needle not in text, f"{needle[:6]}... leaked into {path}"
    for stream in (first.stdout, first.stderr, second.stdout, second.stderr):
        assert secret not in stream and "sk-test-abcdefghij" not in stream


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "autorule", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_missing_input_from_the_cli_names_the_command(tmp_path):
    """A downstream stage started too early fails fast, without a traceback, naming the command
    that makes its input (with the user's overrides)."""
    root = tmp_path / "root"
    res = _cli("stage=sft", f"paths.root={root}", "seed=3")
    assert res.returncode == 1
    assert "Make it first with:" in res.stderr
    assert f"python -m autorule stage=preprocess paths.root={root} seed=3" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (root / "sft").exists()  # failed before any work


def test_cli_refuses_credentials_before_anything_is_written(tmp_path):
    """A secret on the command line is refused before Hydra echoes it anywhere."""
    root = tmp_path / "root"
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-abcdefghijklmnopqrstuvwxyz"}
    for args in (
        ["+extract.llm.api_key=plainSECRETvalue999"],
        ["-m", "dataset=uf,mt", "+extra.password=hunter2SECRETpw"],
        ["extract.llm.model=sk-test-abcdefghijklmnopqrstuvwxyz"],
        ["+notes={api_key: plainSECRETvalue999}"],
    ):
        res = _cli("stage=preprocess", f"paths.root={root}", *args, env=env)
        assert res.returncode == 2, res.stderr[-2000:]
        assert "no secrets on the command line" in res.stderr
        assert "api_key_env" in res.stderr
        for needle in ("plainSECRETvalue999", "hunter2SECRETpw", "abcdefghijklmnopqrstuvwxyz"):
            assert needle not in res.stdout + res.stderr
    assert not root.exists()


def test_fast_token_counts_match_the_tokenizer(make_cfg):
    """The backend shortcut counts exactly what ``tokenizer(text)`` counts, and so do the
    fallback used for slow tokenizers and the count by pieces."""
    tok = load_tokenizer(make_cfg())
    df = pd.read_parquet(Path(make_cfg().dataset.path) / "data/train_prefs-00000-of-00001.parquet")
    texts = df["prompt"].tolist() + [m[-1]["content"] for m in df["chosen"]] + ["", "é 日本 🙂"]
    expected = [len(ids) for ids in tok(texts, add_special_tokens=False).input_ids]
    assert hasattr(tok.backend_tokenizer, "encode_batch_fast")
    assert token_lengths(tok)(texts) == expected
    counter = PieceCounter.of(tok, False, check_every=1)
    by_pieces = counter.count(texts)
    assert by_pieces[-1] is None  # not plain ASCII: the tokenizer's
    assert [n for n in by_pieces if n is not None] == [
        e for n, e in zip(by_pieces, expected, strict=True) if n is not None
    ]
    assert counter.counted > len(texts) // 2

    class Slow:  # no Rust backend: the plain call
        def __call__(self, texts, **kwargs):
            return tok(texts, **kwargs)

    assert token_lengths(Slow())(texts) == expected


def test_counting_by_pieces_changes_no_output(make_cfg, tmp_path, monkeypatch):
    """preprocess.count_by_pieces is speed only: every file is byte for byte the same without
    it (the setting is outside the artifact's hash, so each run gets its own root). At
    max_tokens=100 most of the bundled answers lie between the byte bounds, so the pieces decide
    them."""
    made = []
    of = PieceCounter.of.__func__

    def recording(*args, **kwargs):
        made.append(of(PieceCounter, *args, **kwargs))
        return made[-1]

    monkeypatch.setattr(PieceCounter, "of", staticmethod(recording))
    outputs = {}
    for flag in ("true", "false"):
        cfg = make_cfg(
            f"preprocess.count_by_pieces={flag}",
            "preprocess.filter.max_tokens=100",
            root=tmp_path / flag,
        )
        out = preprocess.run(cfg)
        outputs[flag] = {f.name: f.read_bytes() for f in sorted(out.glob("*.parquet"))}
        assert read_manifest(out)["counts"]["train_prefs_dropped_chosen_length"] > 0
    assert len(made) == 1 and made[0].counted > 1000 and made[0].checked > 0
    assert outputs["true"] == outputs["false"]
    assert len(outputs["true"]) == 6


def test_an_empty_root_is_refused_before_anything_is_written(tmp_path):
    """paths.root='' would put Hydra's logs at /logs and the caches at /.cache."""
    outside = {path: path.exists() for path in (Path("/logs"), Path("/.cache"))}
    runs = [
        (["paths.root="], os.environ),
        (["paths.root=''"], os.environ),
        (["stage=pipeline"], {**os.environ, "AUTORULE_ROOT": ""}),
    ]
    for args, env in runs:
        cmd = [sys.executable, "-m", "autorule", "stage=preprocess", *args]
        res = subprocess.run(
            cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert res.returncode == 1, res.stderr[-2000:]
        [line] = res.stderr.strip().splitlines()  # one line, no traceback
        assert line.startswith("[autorule] error: paths.root='' is empty")
    assert list(tmp_path.iterdir()) == []
    assert all(path.exists() == existed for path, existed in outside.items())
    # The same from Python, or from a config file: refused before any stage runs.
    cfg = compose(["stage=preprocess", "paths.root=''"])
    with pytest.raises(ConfigError, match="paths.root='' is empty"):
        run_stage(cfg)
    with pytest.raises(InterpolationResolutionError, match="paths.root='' is empty"):
        str(cfg.paths.cache)  # the cache folder cannot fall back to /.cache


def copy_of_uf(make_cfg, tmp_path) -> Path:
    import shutil

    copy = tmp_path / "uf"
    shutil.copytree(make_cfg().dataset.path, copy)
    return copy


def test_one_split_with_wrong_columns_is_named_with_its_file(make_cfg, tmp_path):
    copy = copy_of_uf(make_cfg, tmp_path)
    f = copy / "data" / "test_sft-00000-of-00001.parquet"
    pd.read_parquet(f).rename(columns={"chosen": "preferred"}).to_parquet(f)
    with pytest.raises(ValueError) as err:
        preprocess.run(make_cfg(f"dataset.path={copy}"))
    message = str(err.value)
    assert message.startswith(f"split test_sft of {copy} (file {f})")
    assert "lacks the columns ['chosen']" in message and "'preferred'" in message


def test_a_row_with_an_empty_message_list_is_named_by_file_row_and_column(make_cfg, tmp_path):
    copy = copy_of_uf(make_cfg, tmp_path)
    f = copy / "data" / "train_prefs-00000-of-00001.parquet"
    df = pd.read_parquet(f)
    df.at[5, "chosen"] = []
    df.to_parquet(f)
    with pytest.raises(ValueError) as err:
        preprocess.run(make_cfg(f"dataset.path={copy}"))
    assert str(err.value).startswith(
        f"column 'chosen' at row 5 of file {f} (row 5 of split train_prefs) is empty"
    )


def test_a_truncated_file_is_caught_before_use_and_recomputed(make_cfg, caplog):
    """A damaged parquet file in a finished artifact: the next stage names it instead of failing
    inside pyarrow, and re-running preprocess recomputes the artifact."""
    cfg = make_cfg()
    path = preprocess.run(cfg)
    data = path / "train_sft.parquet"
    intact = data.read_bytes()
    data.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(StageInputError, match="file train_sft.parquet is corrupted: it has"):
        sft.run(make_cfg("stage=sft"))
    with caplog.at_level(logging.INFO, logger="autorule.core.job"):
        assert preprocess.run(cfg) == path
    assert "train_sft.parquet is corrupted" in caplog.text and "nothing to do" not in caplog.text
    assert data.read_bytes() == intact  # the same data, recomputed
    # A change that keeps the size is caught by the hashes, which verify=true checks.
    flipped = bytearray(intact)
    flipped[len(flipped) // 2] ^= 0xFF
    data.write_bytes(bytes(flipped))
    assert is_up_to_date(cfg, "preprocess")[0]  # sizes only: not seen
    verify = make_cfg("verify=true")
    fresh, reason = is_up_to_date(verify, "preprocess")
    assert not fresh and reason == "file train_sft.parquet is corrupted: its sha256 differs " + (
        "from the manifest's"
    )
    with pytest.raises(StageInputError, match="train_sft.parquet is corrupted"):
        sft.run(make_cfg("stage=sft", "verify=true"))
    preprocess.run(make_cfg("force=true", "verify=true"))
    assert data.read_bytes() == intact
