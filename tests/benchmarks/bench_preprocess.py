"""Benchmark: preprocess on an UltraFeedback-size input (``make bench``).

Generates a synthetic copy with the hub's split sizes (61,135 pairs in each train split, 2,000 /
1,000 in the test splits) and answers of realistic length (about 1,700 characters), then times
``preprocess.run``: dataset load, the filter with its tokenization, formatting, parquet writes.
Three layouts: ``distinct`` (every split has its own texts: the worst case), ``hub`` (the SFT
splits reuse the preference splits' prompts and chosen answers, as the hub copy's do, so the
memoised token counts are reused) and ``varied`` (``distinct`` with every answer rewritten in a
vocabulary of 100,000 words drawn by a Zipf law, a fifth of the answers holding a non-ASCII
character: the generated answers' ~150 distinct words and plain ASCII would flatter the
counting by pieces, which tokenizes each distinct piece once and leaves non-ASCII texts to the
tokenizer). Target, asserted: at most 30 s for ``distinct``, under a minute for the others, on 2
cores. Figures go to docs/benchmarks.md by hand, with the machine they were taken on.
"""

import os
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from autorule.core.artifacts import read_manifest
from autorule.data.models import load_tokenizer
from autorule.data.synthetic import write_ultrafeedback
from autorule.data.token_counts import PieceCounter
from autorule.stages import preprocess

pytestmark = pytest.mark.bench

# Split sizes of HuggingFaceH4/ultrafeedback_binarized.
HUB_SIZES = {"train_prefs": 61135, "test_prefs": 2000, "train_sft": 61135, "test_sft": 1000}


def vary_answers(data, tokenizer, seed: int = 0) -> None:
    """Rewrites the final chosen and rejected message of every row of the parquet files under
    ``data`` in a vocabulary of 100,000 words (one or two of the tokenizer's word tokens each:
    about 22,000 distinct), drawn by a Zipf law (exponent 1.1), broken by punctuation, numbers
    and line feeds; an answer has a twelfth as many words as it had characters (an ordinary one
    about 1,150 characters and 350 tokens, under preprocess.filter.max_tokens as before); every
    fifth answer gets a non-ASCII character."""
    rng = np.random.default_rng(seed)
    # The tokenizer's word tokens ("\u0120" marks the leading space), "confidence" left out
    # (the filter drops answers holding it).
    alpha = sorted(
        {
            t[1:]
            for t in tokenizer.get_vocab()
            if t.startswith("\u0120") and t[1:].isascii() and t[1:].isalpha() and len(t) > 3
            if "onfiden" not in t
        }
    )
    pairs = rng.integers(0, len(alpha), size=(100_000, 2))
    single = rng.random(100_000) < 0.7
    vocab = np.array(
        [
            alpha[a] if one else alpha[a] + alpha[b]
            for (a, b), one in zip(pairs, single, strict=True)
        ]
    )
    ranks = np.arange(1, len(vocab) + 1, dtype=float) ** -1.1
    ranks /= ranks.sum()
    marks = np.array([" ", " ", " ", " ", " ", " ", ", ", ". ", ". ", "? ", ".\n\n", " 12 "])
    answers = 0

    def rewrite(messages):
        nonlocal answers
        last = dict(messages[-1])
        n = max(1, len(last["content"]) // 12)
        words = vocab[rng.choice(len(vocab), size=n, p=ranks)]
        seps = marks[rng.integers(0, len(marks), size=n)]
        text = "".join(np.char.add(words, seps)).strip()
        answers += 1
        if answers % 5 == 0:
            text = text.replace(" ", " \u2019", 1)
        last["content"] = text
        return [*messages[:-1], last]

    for path in sorted(data.glob("*.parquet")):
        df = pd.read_parquet(path)
        df["chosen"] = [rewrite(list(m)) for m in df["chosen"]]
        df["rejected"] = [rewrite(list(m)) for m in df["rejected"]]
        df.to_parquet(path, index=False)


@pytest.mark.parametrize("layout", ["distinct", "hub", "varied"])
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
    tokenizer = load_tokenizer(cfg)  # build the tiny tokenizer outside the timed region
    if layout == "varied":
        vary_answers(copy / "data", tokenizer)
    counters = []
    monkeypatch.setattr(
        PieceCounter, "of", _recording(PieceCounter.of.__func__, PieceCounter, counters)
    )
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
    for counter in counters:
        print(
            f"[bench] counted by pieces: {counter.counted} texts ({len(counter.memo)} distinct "
            f"pieces tokenized, {counter.checked} texts checked whole); the tokenizer counted "
            f"{counter.passed} texts whole"
        )
    assert counts["train_prefs_rows_in"] == HUB_SIZES["train_prefs"]
    target = 30 if layout == "distinct" else 60
    assert elapsed < target, f"target: under {target} s on 2 cores, took {elapsed:.1f} s"


def _recording(of, cls, counters):
    def record(*args, **kwargs):
        counter = of(cls, *args, **kwargs)
        counters.append(counter)
        return counter

    return staticmethod(record)
