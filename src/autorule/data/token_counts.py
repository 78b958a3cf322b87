"""Token counts for the preprocess length filter: exact, and cheaper than tokenizing every text.

The filter (:mod:`autorule.data.filters`) only needs to know on which side of
``preprocess.filter.max_tokens`` each text falls, but UltraFeedback has about 250,000 answers to
decide and tokenizing them is nearly all of the stage's time. Three ways to a count, cheapest
first, each used only where it provably gives the tokenizer's own answer:

1. **Byte bounds** (:func:`byte_bounds`): a byte-level BPE makes at most one token per UTF-8 byte
   and at least one per ``longest`` bytes, so a short or a very long text is decided by its length.
2. **Pieces** (:class:`PieceCounter`): a tokenizer's model works on each pre-token piece alone,
   so a text's count is the sum of its pieces' counts. Pieces recur (words, punctuation, runs of
   spaces), so each distinct piece is tokenized once and remembered; splitting a text into
   pieces with Python's ``re`` is several times cheaper than the tokenizer's full encode. This is
   done only where the split provably agrees with the tokenizer's: texts of printable ASCII,
   tab, line feed and carriage return (where the Unicode classes of the tokenizer's pattern have
   one meaning in both regex engines), no added token in the text, and a pre-tokenizer of a
   known shape (GPT-2's ``ByteLevel``, or a ``Split`` pattern before a ``ByteLevel`` without its
   own regex, as Llama-3 and Qwen2 have). Every 100th text counted this way is also tokenized
   whole and a disagreement stops the stage (:class:`PieceCountMismatch`).
3. **Tokenizing** (:func:`token_lengths`): everything else, through the fast tokenizer's Rust
   backend.

``preprocess.count_by_pieces=false`` turns the second way off; the counts are the same.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

# tokenizers' ByteLevel pre-tokenizer splits with this pattern when use_regex is true (GPT-2's,
# from the tokenizers source, pre_tokenizers/byte_level.rs).
BYTE_LEVEL_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# The characters a text counted by pieces may hold. On them \p{L} is A-Z a-z, \p{N} is 0-9 and
# \s is tab, line feed, carriage return and space in the tokenizer's engine (Oniguruma) and in
# ``re`` alike; the other control characters are whitespace to one engine and not the other.
_PLAIN = r"\t\n\r\x20-\x7e"
# Each the tokenizer's escape, as a class member and as a whole class, on those characters.
_ESCAPES = {
    r"\p{L}": ("A-Za-z", "[A-Za-z]"),
    r"\p{N}": ("0-9", "[0-9]"),
    r"\s": (r"\t\n\r ", r"[\t\n\r ]"),
    r"\S": (None, r"[^\t\n\r ]"),
    r"\r": (r"\r", r"\r"),
    r"\n": (r"\n", r"\n"),
    r"\t": (r"\t", r"\t"),
}
_GROUPS = ("(?:", "(?i:", "(?!", "(?=")
# Normalizers that leave printable ASCII as it is.
_ASCII_IDENTITY = {"NFC", "NFD", "NFKC", "NFKD"}
# The ByteLevel keys whose meaning is known here; a newer option makes the split unknown.
_BYTE_LEVEL_KEYS = {"type", "add_prefix_space", "trim_offsets", "use_regex"}
# PieceCounter's memo packs a piece's count above its length.
_SHIFT = 32
_MASK = (1 << _SHIFT) - 1


def token_lengths(
    tokenizer, count_special_tokens: bool = False
) -> Callable[[list[str]], list[int]]:
    """A function: texts -> their token counts, as ``tokenizer`` counts.

    Without ``count_special_tokens`` a text's own tokens are counted; with it, also the special
    tokens the tokenizer adds around a text (Llama-3: BOS), i.e. ``len(tokenizer.encode(text))``.

    A fast tokenizer's Rust backend is called without offset tracking (``encode_batch_fast``),
    which gives the same ids about 1.7x faster than ``tokenizer(texts)`` on the benchmark input.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return lambda texts: [
            len(e)
            for e in backend.encode_batch_fast(texts, add_special_tokens=count_special_tokens)
        ]
    # verbose=False: counting long texts is the point, so the "longer than the model's maximum
    # length" warning would only mislead.
    return lambda texts: [
        len(ids)
        for ids in tokenizer(texts, add_special_tokens=count_special_tokens, verbose=False)[
            "input_ids"
        ]
    ]


def _spec(tokenizer) -> dict | None:
    """The backend tokenizer's JSON, or None without one (or with truncation or padding on,
    which would cut or pad the counts)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation or backend.padding:
        return None
    return json.loads(backend.to_str())


def _special_count(tokenizer) -> int:
    """The special tokens the post-processor adds around one text (Llama-3: BOS)."""
    backend = tokenizer.backend_tokenizer
    return len(backend.encode("a", add_special_tokens=True)) - len(
        backend.encode("a", add_special_tokens=False)
    )


@dataclass(frozen=True)
class ByteBounds:
    """Bounds on a byte-level BPE tokenizer's count of a text from its UTF-8 length ``b`` alone.

    The pre-tokenizer turns each byte into one symbol and BPE merges only join symbols, so the
    text has at most ``b + prefix`` tokens of its own (``prefix``: a space the pre-tokenizer
    puts in front). When every byte's symbol is in the vocabulary (none is dropped) and no added
    token swallows the spaces around it, a token covers at most ``longest`` bytes, so the text
    has at least ``ceil(b / longest)``; ``longest`` is None where that does not hold. ``special``:
    the tokens the post-processor adds around a text (Llama-3: BOS).
    """

    prefix: int
    longest: int | None
    special: int


def _pre_steps(spec: dict) -> list[dict]:
    pre = spec.get("pre_tokenizer") or {}
    return pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]


def byte_bounds(tokenizer) -> ByteBounds | None:
    """The :class:`ByteBounds` of ``tokenizer``, or None unless it provably has them: a fast
    tokenizer whose model is BPE (no dropout, no byte fallback), with no normalizer, no
    truncation or padding, and a pre-tokenizer that is ByteLevel, alone or after Splits that keep
    every character."""
    from tokenizers.pre_tokenizers import ByteLevel

    spec = _spec(tokenizer)
    if spec is None:
        return None
    model = spec["model"]
    if (
        model.get("type") != "BPE"
        or model.get("dropout")
        or model.get("byte_fallback")
        or spec.get("normalizer") is not None
    ):
        return None
    steps = _pre_steps(spec)
    byte_level = [p for p in steps if p.get("type") == "ByteLevel"]
    splits = [p for p in steps if p.get("type") == "Split" and p.get("behavior") != "Removed"]
    if len(byte_level) != 1 or len(byte_level) + len(splits) != len(steps):
        return None
    alphabet = set(ByteLevel.alphabet())
    vocab = model["vocab"]

    def covers(token: str) -> int:  # most text bytes one token can stand for
        return len(token) if set(token) <= alphabet else len(token.encode())

    added = spec.get("added_tokens") or []
    longest = None
    if alphabet <= vocab.keys() and not any(t["lstrip"] or t["rstrip"] for t in added):
        longest = max(map(covers, [*vocab, *(t["content"] for t in added)]))
    prefix = int(bool(byte_level[0].get("add_prefix_space")))
    return ByteBounds(prefix, longest, _special_count(tokenizer))


def ascii_pattern(pattern: str) -> re.Pattern | None:
    """``pattern`` (the tokenizer's Oniguruma syntax) as a Python ``re`` pattern that splits
    texts of :data:`_PLAIN` characters the same way, or None where that is not certain: an
    escape other than ``\\p{L}``, ``\\p{N}``, ``\\s``, ``\\S``, ``\\r``, ``\\n``, ``\\t`` and
    escaped punctuation, a ``.``, ``^`` or ``$`` (whose meaning differs between the engines), a
    nested class, or a group other than ``(?:``, ``(?i:``, ``(?!``, ``(?=``."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            escape = next((e for e in _ESCAPES if pattern.startswith(e, i)), None)
            if escape is None:
                following = pattern[i + 1 : i + 2]
                if not following or following.isalnum() or not following.isascii():
                    return None
                out.append("\\" + following)
                i += 2
                continue
            member, whole = _ESCAPES[escape]
            replacement = member if in_class else whole
            if replacement is None:
                return None
            out.append(replacement)
            i += len(escape)
        elif in_class:
            if c == "[":
                return None
            in_class = c != "]"
            out.append(c)
            i += 1
        elif c == "[":
            in_class = True
            start = "[^" if pattern.startswith("[^", i) else "["
            if pattern.startswith("]", i + len(start)):
                return None  # a leading "]" is a literal in one engine and not the other
            out.append(start)
            i += len(start)
        elif c in ".^$":
            return None
        elif pattern.startswith("(?", i):
            group = next((g for g in _GROUPS if pattern.startswith(g, i)), None)
            if group is None:
                return None
            out.append(group)
            i += len(group)
        else:
            out.append(c)
            i += 1
    if in_class:
        return None
    try:
        return re.compile("".join(out))
    except re.error:  # e.g. possessive quantifiers before Python 3.11
        return None


def split_pattern(spec: dict) -> re.Pattern | None:
    """The :func:`ascii_pattern` that splits texts into the pieces the tokenizer's model sees,
    or None where the tokenizer is not of a shape whose split is known: pre-tokenizer GPT-2's
    ``ByteLevel`` (its own regex), or one ``Split`` (isolated matches) then a ``ByteLevel``
    without regex; no prefix space; no normalizer other than Unicode normal forms (which leave
    printable ASCII alone); a model without dropout."""
    if spec["model"].get("dropout"):
        return None
    norm = spec.get("normalizer")
    forms = (norm or {}).get("normalizers", [norm]) if norm else []
    if any(f.get("type") not in _ASCII_IDENTITY for f in forms):
        return None
    steps = _pre_steps(spec)
    last = steps[-1] if steps else {}
    if (
        last.get("type") != "ByteLevel"
        or last.get("add_prefix_space")
        or set(last) - _BYTE_LEVEL_KEYS
    ):
        return None
    if len(steps) == 1 and last.get("use_regex", True):
        return ascii_pattern(BYTE_LEVEL_PATTERN)
    if len(steps) != 2 or last.get("use_regex", True):
        return None
    split = steps[0]
    if (
        split.get("type") != "Split"
        or split.get("behavior") != "Isolated"
        or split.get("invert")
        or set(split) - {"type", "pattern", "behavior", "invert"}
    ):
        return None
    pattern = split["pattern"]
    if "Regex" in pattern:
        return ascii_pattern(pattern["Regex"])
    if "String" in pattern:
        return re.compile(re.escape(pattern["String"]))
    return None


class PieceCountMismatch(RuntimeError):
    """Counting by pieces disagreed with tokenizing a text whole (see :class:`PieceCounter`)."""


class PieceCounter:
    """Counts texts as the sum of their pre-token pieces' counts, each distinct piece tokenized
    once (see the module's docstring for when that is exact).

    :meth:`count` answers None for a text it cannot count this way (a character outside
    :data:`_PLAIN`, an added token's opening characters, a span the pattern does not match); the
    caller tokenizes those. Every ``check_every``-th text it counts is also tokenized whole; a
    different count raises :class:`PieceCountMismatch` naming the text, so a tokenizer whose
    split is not what it seems stops the stage instead of filtering by wrong counts.
    """

    def __init__(
        self,
        tokenizer,
        pattern: re.Pattern,
        skip: Callable[[str], bool],
        count_special_tokens: bool,
        check_every: int = 100,
    ):
        self.name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        self.backend = tokenizer.backend_tokenizer
        self.pieces = pattern.findall
        self.skip = skip
        self.special = _special_count(tokenizer) if count_special_tokens else 0
        self.exact = token_lengths(tokenizer, count_special_tokens)
        self.check_every = check_every
        self.memo: dict[str, int] = {}
        self.counted = 0  # texts counted by pieces so far (the checks' clock)
        self.checked = 0  # of those, tokenized whole as well
        self.passed = 0  # texts left to the tokenizer

    @classmethod
    def of(cls, tokenizer, count_special_tokens: bool, **kwargs) -> PieceCounter | None:
        """The counter for ``tokenizer``, or None where its split is not known
        (:func:`split_pattern`)."""
        spec = _spec(tokenizer)
        pattern = split_pattern(spec) if spec is not None else None
        if pattern is None:
            return None
        # A text holding the opening characters of an added token is left to the tokenizer,
        # which cuts added tokens out before it splits.
        openings = sorted(
            {
                t["content"][:2]
                for t in spec.get("added_tokens") or []
                if re.fullmatch(f"[{_PLAIN}]+", t["content"])
            }
        )
        # A single character class is the cheapest search re has; the openings (Llama-3's 256
        # special tokens share "<|") are substring tests.
        foreign = re.compile(f"[^{_PLAIN}]").search
        if len(openings) <= 8:

            def skip(text: str) -> bool:
                return bool(foreign(text)) or any(o in text for o in openings)

        else:
            either = re.compile("|".join([f"[^{_PLAIN}]", *map(re.escape, openings)])).search

            def skip(text: str) -> bool:
                return bool(either(text))

        return cls(tokenizer, pattern, skip, count_special_tokens, **kwargs)

    def _learn(self, pieces: set[str]) -> None:
        new = [p for p in pieces if p not in self.memo]
        counts = self.backend.encode_batch_fast(new, add_special_tokens=False)
        self.memo.update((p, len(e) << _SHIFT | len(p)) for p, e in zip(new, counts, strict=True))

    def count(self, texts: list[str]) -> list[int | None]:
        # The memo holds each piece's count and length in one int (count << 32 | length), so
        # one sum gives a text's count and how much of it the pieces cover: a text with a gap
        # between matches (a pattern that does not match everything) is the tokenizer's.
        memo, counts = self.memo, []
        later: list[tuple[int, list[str]]] = []  # texts with pieces not seen before
        for text in texts:
            if len(text) > _MASK or self.skip(text):
                counts.append(None)
                continue
            pieces = self.pieces(text)
            try:
                total = sum(map(memo.__getitem__, pieces))
            except KeyError:
                later.append((len(counts), pieces))
                counts.append(None)
                continue
            counts.append(self._total(total, len(text)))
        if later:
            distinct: set[str] = set()
            for _, pieces in later:
                distinct.update(pieces)
            self._learn(distinct)
            for j, pieces in later:
                counts[j] = self._total(sum(map(memo.__getitem__, pieces)), len(texts[j]))
        self.passed += counts.count(None)
        self._check(texts, counts)
        return counts

    def _total(self, total: int, length: int) -> int | None:
        return (total >> _SHIFT) + self.special if total & _MASK == length else None

    def _check(self, texts: list[str], counts: list[int | None]) -> None:
        sample = []
        for j, n in enumerate(counts):
            if n is not None:
                if self.counted % self.check_every == 0:
                    sample.append(j)
                self.counted += 1
        if not sample:
            return
        whole = self.exact([texts[j] for j in sample])
        self.checked += len(sample)
        for j, n in zip(sample, whole, strict=True):
            if counts[j] != n:
                raise PieceCountMismatch(
                    f"counting by pre-token pieces gave {counts[j]} tokens where {self.name} "
                    f"gives {n} for the text {texts[j][:120]!r}: its pre-tokenizer splits "
                    "differently from what its tokenizer.json says. Set "
                    "preprocess.count_by_pieces=false (the counts then come from the tokenizer "
                    "alone), and please report the tokenizer."
                )


def length_counter(
    tokenizer, count_special_tokens: bool, max_tokens: int, by_pieces: bool = True
) -> Callable[[list[str]], list[int]]:
    """A function: texts -> their token counts (:func:`token_lengths`), except that a text whose
    byte length alone shows it is under ``max_tokens`` or not (:func:`byte_bounds`) is not
    tokenized and gets the bound instead, which falls on the same side of ``max_tokens``; with
    ``by_pieces``, the remaining texts that a :class:`PieceCounter` can count are counted by it."""
    exact = token_lengths(tokenizer, count_special_tokens)
    bounds = byte_bounds(tokenizer)
    pieces = PieceCounter.of(tokenizer, count_special_tokens) if by_pieces else None
    if bounds is None and pieces is None:
        return exact
    special = bounds.special if bounds and count_special_tokens else 0

    def count(texts: list[str]) -> list[int]:
        counts: list[int | None] = []
        todo = []
        for j, text in enumerate(texts):
            if bounds is not None:
                n = len(text) if text.isascii() else len(text.encode())
                most = n + bounds.prefix + special
                least = -(-n // bounds.longest) + special if bounds.longest else 0
                if most < max_tokens:
                    counts.append(most)
                    continue
                if least >= max_tokens:
                    counts.append(least)
                    continue
            counts.append(None)
            todo.append(j)
        if pieces is not None and todo:
            plain, other = [], []
            for j in todo:
                (other if pieces.skip(texts[j]) else plain).append(j)
            # The tokenizer counts the texts the pieces cannot in a thread of its own: its Rust
            # backend releases the GIL, so it runs while this thread splits the plain ones.
            with ThreadPoolExecutor(max_workers=1) as pool:
                whole = pool.submit(exact, [texts[j] for j in other]) if other else None
                by_pieces = pieces.count([texts[j] for j in plain])
                for j, n in zip(plain, by_pieces, strict=True):
                    counts[j] = n
                if whole is not None:
                    for j, n in zip(other, whole.result(), strict=True):
                        counts[j] = n
            todo = [j for j in plain if counts[j] is None]  # a gap between the matches
            pieces.passed += len(other)
        for j, n in zip(todo, exact([texts[j] for j in todo]), strict=True):
            counts[j] = n
        return counts

    count.pieces = pieces  # its tallies: texts counted, checked, left to the tokenizer
    return count
