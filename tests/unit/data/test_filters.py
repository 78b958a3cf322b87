"""The preprocess filter and the MT-Bench question split, on literal inputs."""

import pytest

from autorule.data.filters import (
    REASONS,
    FilterSettings,
    cheap_reason,
    filter_rows,
    format_prompt,
    length_reason,
    mt_question_split,
)


def words(texts):
    """A stand-in tokenizer: one token per whitespace-separated word."""
    return [len(t.split()) for t in texts]


def w(n):
    return " ".join(["x"] * n)


S = FilterSettings()


@pytest.mark.parametrize(
    ("sc", "sr", "chosen", "rejected", "reason"),
    [
        (8, 3, "fine", "bad", None),
        (5, 5, "fine", "bad", "score"),  # equal scores are dropped: chosen must be strictly better
        (3, 8, "fine", "bad", "score"),
        (8, 3, "Confidence: 90%", "bad", "confidence"),
        (8, 3, "fine", "my CONFIDENCE is low", "confidence"),
        (8, 3, "overconfidence", "bad", "confidence"),  # substring match, as the paper's filter
        (5, 5, "Confidence", "bad", "score"),  # first reason wins
    ],
)
def test_cheap_reason(sc, sr, chosen, rejected, reason):
    assert cheap_reason(sc, sr, chosen, rejected, S) == reason


@pytest.mark.parametrize(
    ("p", "c", "r", "reason"),
    [
        (511, 511, 511, None),
        (512, 10, 10, "prompt_length"),  # exactly 512 is not "under 512"
        (10, 512, 10, "chosen_length"),
        (10, 10, 512, "rejected_length"),
        (513, 513, 513, "prompt_length"),
    ],
)
def test_length_reason_boundaries(p, c, r, reason):
    assert length_reason(p, c, r, S) == reason


def test_switches_turn_conditions_off():
    off = FilterSettings(length=False, score=False, no_confidence=False)
    assert cheap_reason(1, 9, "Confidence", "confidence", off) is None
    assert length_reason(10_000, 10_000, 10_000, off) is None
    assert length_reason(300, 10, 10, FilterSettings(max_tokens=300)) == "prompt_length"


def test_filter_rows_counts_each_reason_once():
    rows = [  # prompt, chosen, rejected, score_chosen, score_rejected
        (w(3), w(3), w(3), 9, 1),  # kept
        (w(3), w(3), w(3), 4, 4),  # score (tie)
        (w(3), "Confidence high", w(3), 9, 1),  # confidence
        (w(512), w(3), w(3), 9, 1),  # prompt length
        (w(3), w(600), w(3), 9, 1),  # chosen length
        (w(3), w(3), w(512), 9, 1),  # rejected length
        (w(511), w(511), w(511), 9, 1),  # kept at the boundary
    ]
    cols = list(zip(*rows, strict=True))
    calls = []

    def count(texts):
        calls.append(len(texts))
        return words(texts)

    keep, dropped = filter_rows(*cols, count_tokens=count, s=S)
    assert keep == [0, 6]
    assert dropped == {
        "score": 1,
        "confidence": 1,
        "prompt_length": 1,
        "chosen_length": 1,
        "rejected_length": 1,
    }
    assert set(dropped) == set(REASONS)
    # Only the 5 rows that pass the cheap checks have their prompt tokenized, only the 4 whose
    # prompt is short their chosen answer, only the 3 whose chosen answer is short their rejected.
    assert calls == [5, 4, 3]


def test_mt_split_default():
    train, test = mt_question_split()
    assert train[:5] == [81, 82, 83, 84, 85] and test[:5] == [86, 87, 88, 89, 90]
    assert train[-5:] == [151, 152, 153, 154, 155] and test[-5:] == [156, 157, 158, 159, 160]
    assert len(train) == len(test) == 40
    assert not set(train) & set(test)


def test_mt_split_reproduces_released_range_bug():
    train, test = mt_question_split(first_question_only=True)
    assert train == [81, 91, 101, 111, 121, 131, 141, 151]
    assert test == [86, 96, 106, 116, 126, 136, 146, 156]  # the test loader has the same bug


def test_mt_split_rejects_bad_block():
    with pytest.raises(ValueError, match="train_per_block"):
        mt_question_split(train_per_block=10)


def test_format_prompt_plain():
    assert format_prompt("Hi {there}", "<|user|>{prompt}<|assistant|>") == (
        "<|user|>Hi {there}<|assistant|>"
    )


def bos_tokenizer():
    """A fast tokenizer that, like Llama-3's, puts BOS before every text it encodes."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<bos>": 0, "<unk>": 1, "x": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>")


def test_filter_drops_a_text_whose_encode_length_with_bos_is_512():
    """The released code counted len(tokenizer.encode(text)): BOS included, so 511 words are
    512 tokens and the row goes (preprocess.filter.count_special_tokens=true, profile=paper)."""
    from autorule.stages.preprocess import token_lengths

    tok = bos_tokenizer()
    text = w(511)
    assert len(tok.encode(text)) == 512 and tok.encode(text)[0] == tok.bos_token_id
    assert token_lengths(tok, count_special_tokens=True)([text, w(3)]) == [512, 4]
    assert token_lengths(tok)([text, w(3)]) == [511, 3]

    rows = [(text, w(3), w(3), 9, 1), (w(3), w(3), text, 9, 1), (w(3), w(3), w(3), 9, 1)]
    cols = list(zip(*rows, strict=True))
    released = FilterSettings(count_special_tokens=True)
    keep, dropped = filter_rows(*cols, token_lengths(tok, released.count_special_tokens), released)
    assert keep == [2] and dropped["prompt_length"] == 1 and dropped["rejected_length"] == 1
    # Counting the text's own tokens (our option) keeps all three.
    keep, _ = filter_rows(*cols, token_lengths(tok, S.count_special_tokens), S)
    assert keep == [0, 1, 2]


def byte_level_tokenizer(prefix_space=False, bos=False, normalizer=None, added=(), missing=""):
    """A byte-level BPE whose counts sit on both byte bounds: "aaaa" is one token (4 bytes, the
    longest), every other byte its own token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = [c for c in pre_tokenizers.ByteLevel.alphabet() if c not in missing]
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({"aa": len(vocab), "aaaa": len(vocab) + 1, "<bos>": len(vocab) + 2})
    tok = Tokenizer(models.BPE(vocab, [("a", "a"), ("aa", "aa")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    tok.normalizer = normalizer
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
        )
    tok.add_tokens(list(added))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


BOUNDARY_TEXTS = [
    "",
    "x",
    "xyz",
    "a" * 8,
    "a" * 9,
    "a" * 12 + "x",
    "x" * 16,
    "é",
    "日本",
    "🙂 a",
    " " * 7,
    "aaaa " * 4,
]


@pytest.mark.parametrize("prefix_space", [False, True])
@pytest.mark.parametrize("special", [False, True])
def test_byte_bounds_decide_as_tokenizing_does_at_the_boundary(prefix_space, special):
    """For every threshold around each text's byte length, a text the byte bounds decide falls on
    the same side of preprocess.filter.max_tokens as its real count; the bounds are tight here
    (one token per byte, or per 4 bytes), so an off-by-one in either would show."""
    from autorule.stages.preprocess import byte_bounds, length_counter, token_lengths

    tok = byte_level_tokenizer(prefix_space=prefix_space, bos=special)
    bounds = byte_bounds(tok)
    assert bounds is not None
    assert (bounds.prefix, bounds.longest, bounds.special) == (int(prefix_space), 5, int(special))
    exact = token_lengths(tok, special)(BOUNDARY_TEXTS)
    assert exact == [len(tok(t, add_special_tokens=special).input_ids) for t in BOUNDARY_TEXTS]
    decided = 0
    for max_tokens in range(1, 25):
        counted = length_counter(tok, special, max_tokens)(BOUNDARY_TEXTS)
        assert [n >= max_tokens for n in counted] == [n >= max_tokens for n in exact], max_tokens
        decided += sum(c != e for c, e in zip(counted, exact, strict=True))
    assert decided > 0  # the bounds did decide some texts without tokenizing them


def test_byte_bounds_skip_tokenizing_only_undecided_texts():
    from autorule.stages.preprocess import length_counter

    tok = byte_level_tokenizer()
    seen = []
    backend = tok.backend_tokenizer
    original = backend.encode_batch_fast

    class Spy:
        def __getattr__(self, name):
            return getattr(backend, name)

        def encode_batch_fast(self, texts, **kwargs):
            seen.extend(texts)
            return original(texts, **kwargs)

    tok._tokenizer = Spy()
    count = length_counter(tok, False, 4)
    # 3 bytes: under 4 whatever the tokenizer; 20 bytes: at least 20 / 5 = 4 tokens; 4 to 19
    # bytes: only tokenizing tells ("aaaa" is one token, "xxxx" four).
    assert count(["xyz", "x" * 20, "aaaa", "xxxx"])[2:] == [1, 4]
    assert seen == ["aaaa", "xxxx"]


def test_byte_bounds_are_off_where_they_would_not_hold():
    """No bounds for a tokenizer that can make more tokens than bytes (a normalizer that
    lengthens the text, a word-level model), and no lower bound where a token can swallow
    spaces (an added token stripping them) or a byte can be dropped."""
    from tokenizers import AddedToken, normalizers

    from autorule.stages.preprocess import byte_bounds, length_counter, token_lengths

    tripling = byte_level_tokenizer(normalizer=normalizers.Replace("x", "xxx"))
    assert token_lengths(tripling)(["xxxx"]) == [12]  # more tokens than its 4 bytes
    assert byte_bounds(tripling) is None
    assert length_counter(tripling, False, 5)(["xxxx"]) == [12]
    assert byte_bounds(bos_tokenizer()) is None  # word-level

    stripping = byte_level_tokenizer(added=[AddedToken("<m>", lstrip=True)])
    text = " " * 30 + "<m>"
    assert token_lengths(stripping)([text]) == [1]  # 33 bytes in one token
    bounds = byte_bounds(stripping)
    assert bounds is not None and bounds.longest is None
    assert length_counter(stripping, False, 5)([text]) == [1]

    dropping = byte_level_tokenizer(missing="q")  # no symbol for "q": its bytes vanish
    assert token_lengths(dropping)(["q" * 30]) == [0]
    assert byte_bounds(dropping).longest is None
    assert length_counter(dropping, False, 5)(["q" * 30]) == [0]
