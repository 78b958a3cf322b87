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


# Llama-3's split pattern (its tokenizer.json): the paper's policy tokenizer has this shape.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def zipf_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` answers of about 1,600 characters: 50,000 random lower-case words (2 to 10
    letters) drawn by a Zipf law, capitalised after a full stop, with contractions, numbers of 1
    to 6 digits, punctuation and paragraph breaks; every fifth answer holds a non-ASCII
    character."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    weights = np.linspace(2.0, 0.2, len(letters))
    weights /= weights.sum()
    lengths = rng.integers(2, 11, size=50_000)
    words = np.array(["".join(rng.choice(letters, size=k, p=weights)) for k in lengths])
    ranks = np.arange(1, len(words) + 1, dtype=float) ** -1.05
    ranks /= ranks.sum()
    tails = np.array([" ", " ", " ", " ", " ", " ", " ", ", ", ". ", "'s ", "n't ", ".\n\n"])
    texts = []
    for i in range(n):
        count = 200
        body = np.char.add(
            words[rng.choice(len(words), size=count, p=ranks)],
            tails[rng.integers(0, len(tails), size=count)],
        )
        for j in rng.integers(0, count, size=4):
            body[j] = f"{rng.integers(1, 10 ** rng.integers(1, 7))} "
        text = "".join(body).strip()
        texts.append(text.replace(" ", " \u00e9", 1) if i % 5 == 0 else text)
    return texts


def test_count_by_pieces_on_a_llama3_shaped_tokenizer():
    """Counting by pieces against tokenizing every text, for a byte-level BPE of Llama-3's shape
    (its split pattern, a ByteLevel without regex, BOS added, ignore_merges) and 32,000
    entries, trained here on the benchmark's own text: the same length decisions, and the time
    of each on 40,000 answers (both cores for the tokenizer, TOKENIZERS_PARALLELISM=true)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    from autorule.data.token_counts import length_counter, token_lengths

    texts = zipf_texts(40_000)
    backend = Tokenizer(models.BPE(ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=32_000,
        special_tokens=[
            "<|begin_of_text|>",
            *(f"<|reserved_special_token_{i}|>" for i in range(250)),
        ],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts[:5_000], trainer)
    bos = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    max_tokens = 350  # near an answer's count and above its byte bound: every answer undecided
    timings = {}
    for name, count in (
        ("tokenizing every text", token_lengths(tok, True)),
        ("bounds, then pieces", length_counter(tok, True, max_tokens)),
    ):
        t0, cpu0 = time.perf_counter(), time.process_time()
        counts = [n for i in range(0, len(texts), 1000) for n in count(texts[i : i + 1000])]
        timings[name] = (time.perf_counter() - t0, time.process_time() - cpu0, counts)
    (whole, whole_cpu, exact), (fast, fast_cpu, counted) = timings.values()
    assert [n >= max_tokens for n in counted] == [n >= max_tokens for n in exact]
    mean = sum(exact) / len(exact)
    load = os.getloadavg()[0]
    print(
        f"\n[bench] Llama-3-shaped BPE (32,000 entries), {len(texts)} answers of "
        f"{sum(map(len, texts)) / len(texts):,.0f} characters, {mean:.0f} tokens on average: "
        f"tokenizing every text {whole:.1f} s wall ({whole_cpu:.1f} s CPU), bounds then pieces "
        f"{fast:.1f} s wall ({fast_cpu:.1f} s CPU): {whole / fast:.1f}x less wall time, "
        f"{whole_cpu / fast_cpu:.1f}x less CPU; {sum(n >= max_tokens for n in exact)} answers "
        f"at or over {max_tokens} tokens; 1-minute load average {load:.2f}"
    )
    assert fast < whole
