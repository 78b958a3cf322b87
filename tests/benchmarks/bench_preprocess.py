"""Benchmark: preprocess on an UltraFeedback-size input (``make bench``).

Generates a synthetic copy with the hub's split sizes (61,135 pairs in each train split, 2,000 /
1,000 in the test splits) and answers of realistic length (about 1,700 characters), then times
``preprocess.run``: dataset load, the filter with its tokenization, formatting, parquet writes.
Two layouts: ``distinct`` (every split has its own texts: the worst case) and ``hub`` (the SFT
splits reuse the preference splits' prompts and chosen answers, as the hub copy's do, so the
memoised token counts are reused). Target, asserted: under a minute on 2 cores. Figures go to
docs/benchmarks.md by hand, with the machine they were taken on.
"""

import os
import shutil
import time

import pandas as pd
import pytest

from autorule.core.artifacts import read_manifest
from autorule.data.models import load_tokenizer
from autorule.data.synthetic import write_ultrafeedback
from autorule.stages import preprocess

pytestmark = pytest.mark.bench

# Split sizes of HuggingFaceH4/ultrafeedback_binarized.
HUB_SIZES = {"train_prefs": 61135, "test_prefs": 2000, "train_sft": 61135, "test_sft": 1000}


@pytest.mark.parametrize("layout", ["distinct", "hub"])
def test_preprocess_uf_full_size(make_cfg, tmp_path, monkeypatch, layout):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # the tests turn it off; users have it on
    copy = write_ultrafeedback(tmp_path / "uf", HUB_SIZES, seed=1, extra_words=200)
    if layout == "hub":
        data = copy / "data"
        shutil.copy(
            data / "train_prefs-00000-of-00001.parquet", data / "train_sft-00000-of-00001.parquet"
        )
        test_sft = pd.read_parquet(data / "test_prefs-00000-of-00001.parquet").head(1000)
        test_sft.to_parquet(data / "test_sft-00000-of-00001.parquet", index=False)
    cfg = make_cfg(f"dataset.path={copy}")
    load_tokenizer(cfg)  # build the tiny tokenizer outside the timed region
    load = os.getloadavg()[0]
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = preprocess.run(cfg)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    counts = read_manifest(out)["counts"]
    rows = sum(counts[f"{s}_rows_in"] for s in HUB_SIZES)
    print(
        f"\n[bench] preprocess uf ({layout} texts): {rows} rows in {elapsed:.1f} s "
        f"({rows / elapsed:,.0f} rows/s), CPU time {cpu:.1f} s (all threads); kept "
        f"train_prefs={counts['train_prefs_rows']}; 1-minute load average {load:.2f} at the "
        f"start, {os.getloadavg()[0]:.2f} at the end"
    )
    assert counts["train_prefs_rows_in"] == HUB_SIZES["train_prefs"]
    assert elapsed < 60, f"target: under a minute on 2 cores, took {elapsed:.1f} s"
