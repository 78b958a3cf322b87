"""Token counts for the length filter (:mod:`autorule.data.token_counts`): byte bounds and
counting by pieces give the tokenizer's own answer, on literal inputs and on random texts for
tokenizers of the GPT-2, Llama-3 and Qwen2 shapes, built here."""

import random

import pytest

from autorule.data.filters import FilterSettings, filter_rows
from autorule.data.token_counts import (
    BYTE_LEVEL_PATTERN,
    PieceCounter,
    PieceCountMismatch,
    ascii_pattern,
    length_counter,
    split_pattern,
    token_lengths,
)


def w(n):
    return " ".join(["x"] * n)


S = FilterSettings()


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
    from autorule.data.token_counts import token_lengths

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
    from autorule.data.token_counts import byte_bounds, length_counter, token_lengths

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
    from autorule.data.token_counts import length_counter

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
    count = length_counter(tok, False, 4, by_pieces=False)
    # 3 bytes: under 4 whatever the tokenizer; 20 bytes: at least 20 / 5 = 4 tokens; 4 to 19
    # bytes: only tokenizing tells ("aaaa" is one token, "xxxx" four).
    assert count(["xyz", "x" * 20, "aaaa", "xxxx"])[2:] == [1, 4]
    assert seen == ["aaaa", "xxxx"]


def test_byte_bounds_are_off_where_they_would_not_hold():
    """No bounds for a tokenizer that can make more tokens than bytes (a normalizer that
    lengthens the text, a word-level model), and no lower bound where a token can swallow
    spaces (an added token stripping them) or a byte can be dropped."""
    from tokenizers import AddedToken, normalizers

    from autorule.data.token_counts import byte_bounds, length_counter, token_lengths

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


# Pre-tokenizer patterns of two public tokenizers (their tokenizer.json): Llama-3 groups up to
# three digits, Qwen2 splits every digit (and normalizes to NFC).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")

# Pieces of random texts: contractions in both cases, runs of every whitespace, digit runs
# longer than three, punctuation runs, the openings of added tokens.
FRAGMENTS = [
    "Hello", "world", "caf", "'s", "'S", "'ll", "'LL", "'d", "'re", "'Ve", "don't", "I'M",
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t \n", "123", "4567890", "3.14",
    "!!", "?!", "...", "--", "(x)", "a'b", "<", "|", ">", "x", "Z", "_", "#", '"', "'",
]  # fmt: skip


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(FRAGMENTS, k=rng.randint(1, 40))) for _ in range(n)]


def trained_tokenizer(shape: str, bos: bool = False):
    """A small byte-level BPE trained here, with the pre-tokenizer (and normalizer) of
    ``shape``: gpt2 (ByteLevel with its regex), llama3 or qwen2 (a Split pattern, then
    ByteLevel without regex), plus added special tokens opening with "<|"."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(ignore_merges=shape == "llama3"))
    if shape == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        pattern = LLAMA3_PATTERN if shape == "llama3" else QWEN2_PATTERN
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if shape == "qwen2":
        tok.normalizer = normalizers.NFC()
    specials = ["<|begin|>", *(f"<|reserved_{i}|>" for i in range(20))]
    trainer = BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(random_texts(300, seed=1), trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin|> $A", special_tokens=[("<|begin|>", tok.token_to_id("<|begin|>"))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_ascii_pattern_translates_the_classes_and_refuses_what_it_cannot_be_sure_of():
    assert ascii_pattern(r"\p{L}+|\p{N}{1,3}").findall("ab12345 c") == ["ab", "123", "45", "c"]
    assert ascii_pattern(r"[^\s\p{L}]+").findall("a!? b.") == ["!?", "."]
    # the last space stays with the word after it; a lone tab before a word is its own piece
    assert ascii_pattern(r"\s+(?!\S)|\s+").findall("a  \tb") == ["  ", "\t"]
    assert ascii_pattern(r"(?i:'s)|\.").findall("it'S. x's") == ["'S", ".", "'s"]
    for pattern in (BYTE_LEVEL_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN):
        assert ascii_pattern(pattern) is not None, pattern
    for pattern in (
        ".",  # dot: newline or not, per engine and flags
        "^a",
        "a$",  # anchors: line or text, per engine
        r"\d",
        r"\w",
        r"\p{Lu}",  # other escapes and classes
        "(?<=a)b",
        "(?m:a)",  # other groups and flags
        "[[a]]",
        r"[\S]",
        "[]a]",
        "[a",
    ):
        assert ascii_pattern(pattern) is None, pattern


@pytest.mark.parametrize("shape", ["gpt2", "llama3", "qwen2"])
@pytest.mark.parametrize("special", [False, True])
def test_counting_by_pieces_gives_the_tokenizers_counts(shape, special):
    """On random plain-ASCII texts full of the patterns' corner cases, the sum of the pieces'
    counts is the count of tokenizing the text whole, with and without the BOS it adds."""
    tok = trained_tokenizer(shape, bos=special)
    counter = PieceCounter.of(tok, special, check_every=1)
    assert counter is not None
    texts = [t for t in random_texts(400, seed=2) if "<|" not in t]
    counted = counter.count(texts)
    assert None not in counted
    assert counted == token_lengths(tok, special)(texts)
    assert counter.counted == counter.checked == len(texts)
    assert 0 < len(counter.memo) < sum(map(len, texts))  # pieces recur, so fewer than texts' chars
    # A second batch reuses the pieces it has seen.
    seen = len(counter.memo)
    again = counter.count(texts[:50])
    assert again == counted[:50] and len(counter.memo) == seen


@pytest.mark.parametrize("shape", ["gpt2", "llama3"])
def test_texts_outside_plain_ascii_or_holding_an_added_token_are_left_to_the_tokenizer(shape):
    tok = trained_tokenizer(shape)
    counter = PieceCounter.of(tok, False)
    texts = ["café au lait", "tab\x0bvertical", "file\x1cseparator", "ask <|reserved_3|> now", "ok"]
    assert counter.count(texts) == [None, None, None, None, *token_lengths(tok)(["ok"])]
    assert counter.passed == 4
    # length_counter tokenizes those whole, so every decision is still the tokenizer's.
    exact = token_lengths(tok)(texts)
    count = length_counter(tok, False, 5)  # the byte bounds decide none of these at 5
    undecided = [*texts[:4], "plain words here"]
    assert count(undecided) == token_lengths(tok)(undecided)
    assert count.pieces.passed == 4 and count.pieces.counted == 1
    for max_tokens in range(2, 25):
        counted = length_counter(tok, False, max_tokens)(texts)
        assert [n >= max_tokens for n in counted] == [n >= max_tokens for n in exact]


def test_a_pattern_that_leaves_gaps_sends_the_text_to_the_tokenizer():
    """A Split pattern that does not match every character leaves the rest as pieces of their
    own; findall would drop them, so such a text is not counted by pieces."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("[a-z]+"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    counter = PieceCounter.of(tok, False)
    assert counter.count(["abc def", "abc"]) == [None, 3]
    assert token_lengths(tok)(["abc def"]) == [7]


def test_a_disagreement_with_tokenizing_whole_stops_the_count():
    tok = trained_tokenizer("gpt2")
    counter = PieceCounter.of(tok, False, check_every=1)
    texts = ["Hello world's 123", "world world"]
    assert counter.count(texts) == token_lengths(tok)(texts)
    counter.memo[" world"] += 1 << 32  # one token too many for " world"
    with pytest.raises(PieceCountMismatch, match="preprocess.count_by_pieces=false"):
        counter.count(texts)


def spec_of(tok) -> dict:
    import json

    return json.loads(tok.backend_tokenizer.to_str())


@pytest.mark.parametrize(
    "change",
    [
        "prefix_space",
        "merged_split",
        "inverted_split",
        "lowercase",
        "dropout",
        "unknown_byte_level_option",
        "whitespace_pre_tokenizer",
        "regex_after_split",
    ],
)
def test_no_piece_counting_where_the_split_is_not_known(change):
    spec = spec_of(trained_tokenizer("llama3"))
    split, byte_level = spec["pre_tokenizer"]["pretokenizers"]
    assert split_pattern(spec) is not None
    if change == "prefix_space":
        byte_level["add_prefix_space"] = True
    elif change == "merged_split":
        split["behavior"] = "MergedWithPrevious"
    elif change == "inverted_split":
        split["invert"] = True
    elif change == "lowercase":
        spec["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Lowercase"}]}
    elif change == "dropout":
        spec["model"]["dropout"] = 0.1
    elif change == "unknown_byte_level_option":
        byte_level["segmenter"] = None
    elif change == "whitespace_pre_tokenizer":
        spec["pre_tokenizer"] = {"type": "Whitespace"}
    else:
        byte_level["use_regex"] = True
    assert split_pattern(spec) is None


def test_length_counter_decides_as_tokenizing_does_with_both_shortcuts():
    """Byte bounds, then pieces, then the tokenizer: for every threshold the decision is the
    tokenizer's, and the bounds and the pieces each decided some texts."""
    tok = trained_tokenizer("llama3", bos=True)
    texts = random_texts(200, seed=3) + ["café " * 30, "x" * 3]
    exact = token_lengths(tok, True)(texts)
    for max_tokens in (5, 20, 60, 200):
        counted = length_counter(tok, True, max_tokens)(texts)
        assert [n >= max_tokens for n in counted] == [n >= max_tokens for n in exact]
