"""Stage ``preprocess``: raw preference data into clean SFT, preference and prompt splits.

    python -m autorule stage=preprocess dataset=uf
    python -m autorule stage=preprocess dataset=mt

``dataset=uf`` (UltraFeedback, binarized) loads ``dataset.path`` with ``datasets`` (a hub id or a
local folder in the hub's layout), applies the length-and-score filter of
:mod:`autorule.data.filters` to every configured split, adds the columns later stages use, and
writes ``<split>.parquet`` for ``train_sft``, ``test_sft``, ``train_prefs``, ``test_prefs`` plus
``test_subset.parquet`` (the first ``test_subset_size`` filtered test preferences, in order: the
evaluation prompts of later stages). Each split of ``preprocess.unfiltered_splits`` is also written
whole, as loaded, to ``<split>_unfiltered.parquet``: the released AutoRule code drew its extraction
pairs from the unfiltered ``train_prefs`` (``extract.pool=unfiltered``).

Added columns: ``formatted_prompt`` (the paper's plain ``<|user|>{prompt}<|assistant|>`` or the
tokenizer's chat template), ``chosen_content`` and ``rejected_content`` (the final message of each
answer) and ``response`` (the chosen content: the SFT target). The original message lists stay.

``dataset=mt`` (MT-Bench human judgments) drops ties and writes ``train.parquet`` and
``test.parquet`` by question id (see :func:`autorule.data.filters.mt_question_split`).

Counts in the manifest: rows in and out per split and rows dropped per filter reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from autorule.core.artifacts import StageJob
from autorule.core.stage import StageSpec
from autorule.data.filters import FilterSettings, filter_rows, format_prompt, mt_question_split
from autorule.data.model_paths import load_tokenizer

log = logging.getLogger(__name__)

UF_COLUMNS = (
    "prompt",
    "prompt_id",
    "chosen",
    "rejected",
    "messages",
    "score_chosen",
    "score_rejected",
)
MT_COLUMNS = ("question_id", "winner", "conversation_a", "conversation_b")


# preprocess settings that only one dataset reads; the other dataset's artifact ignores them.
_MT_ONLY = (
    "dataset.split",
    "preprocess.mt_block_size",
    "preprocess.mt_train_per_block",
    "preprocess.mt_first_question_only",
)
_UF_ONLY = (
    "preprocess.filter",
    "preprocess.splits",
    "preprocess.test_subset_size",
    "preprocess.prompt_format",
    "preprocess.plain_template",
    "preprocess.unfiltered_splits",
    "model",  # the policy tokenizer is only used by the UltraFeedback length filter
)


def _fingerprint(cfg: DictConfig):
    from autorule.data.fingerprints import preprocess_fingerprint

    return preprocess_fingerprint(cfg)


# The dataset is identified by its content (local folder) or hub id and revision (the
# fingerprint); dataset.path itself is not hashed, so the same data read from two clones or two
# spellings of a path shares one artifact.
SPEC = StageSpec(
    name="preprocess",
    keys=("dataset", "preprocess", "model.name_or_path", "model.tiny"),
    ignore=(
        "preprocess.batch_size",
        "dataset.path",
        "dataset.hub_id",
        "dataset.local_copy",
        "dataset.revision",
    ),
    ignore_when=lambda cfg: _MT_ONLY if cfg.dataset.name == "uf" else _UF_ONLY,
    fingerprint=_fingerprint,
    version=2,
)


def run(cfg: DictConfig) -> Path:
    with StageJob(cfg, SPEC.name) as job:
        if job.done:
            return job.path
        builders = {"uf": _ultrafeedback, "mt": _mt_bench}
        if cfg.dataset.name not in builders:
            raise ValueError(
                f"preprocess knows datasets {sorted(builders)}, "
                f"got dataset.name={cfg.dataset.name!r}"
            )
        counts = builders[cfg.dataset.name](cfg, job.workdir)
        return job.commit(counts)


# --------------------------------------------------------------------------------------------
# Loading


def _load_split(cfg: DictConfig, split: str) -> pd.DataFrame:
    """One split of ``dataset.path`` as a DataFrame, with a clear error when it is not there."""
    import datasets

    path = str(cfg.dataset.path)
    try:
        ds = datasets.load_dataset(path, split=split, revision=cfg.dataset.revision)
    except ValueError as err:  # datasets names the available splits in its message
        raise ValueError(
            f"dataset.path={path} has no split {split!r} "
            f"(key preprocess.splits / dataset.split): {err}"
        ) from err
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"dataset.path={path} could not be loaded: {err}. Give a hub id or a local folder "
            "laid out like the hub repository (data/<split>-00000-of-00001.parquet)"
        ) from err
    return ds.to_pandas()


def _require_columns(df: pd.DataFrame, columns, where: str) -> None:
    """Every column present and filled: ``datasets`` fills a column that one split's file lacks
    with nulls, which would otherwise pass as rows the filter silently drops."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{where} lacks the columns {missing}; it has {list(df.columns)}")
    empty = {c: int(n) for c, n in df[list(columns)].isna().sum().items() if n}
    if empty:
        raise ValueError(f"{where} has missing values (column: rows) {empty}")


# --------------------------------------------------------------------------------------------
# UltraFeedback


def _ultrafeedback(cfg: DictConfig, out: Path) -> dict[str, int]:
    p = cfg.preprocess
    settings = FilterSettings(**p.filter)
    tokenizer = load_tokenizer(cfg)
    batch = int(p.batch_size)

    # Counts are of each text alone, with the special tokens the tokenizer adds (Llama-3: BOS)
    # only under preprocess.filter.count_special_tokens (the released code's count).
    # Token counts are memoised by text: on the hub copy the SFT and preference splits share
    # their prompts and chosen answers, so each distinct text is tokenized once.
    known: dict[str, int] = {}

    lengths = token_lengths(tokenizer, settings.count_special_tokens)

    def count_tokens(texts: list[str]) -> list[int]:
        todo = list(dict.fromkeys(t for t in texts if t not in known))
        for i in range(0, len(todo), batch):
            known.update(zip(todo[i : i + batch], lengths(todo[i : i + batch]), strict=True))
        return [known[t] for t in texts]

    if "test_prefs" not in p.splits:
        raise ValueError("preprocess.splits must include test_prefs: test_subset is drawn from it")
    unknown = [split for split in p.unfiltered_splits if split not in p.splits]
    if unknown:
        raise ValueError(
            f"preprocess.unfiltered_splits names {unknown}, which preprocess.splits "
            f"({list(p.splits)}) does not load"
        )
    counts: dict[str, int] = {}
    for split in p.splits:
        df = _load_split(cfg, split)
        _require_columns(df, UF_COLUMNS, f"split {split} of {cfg.dataset.path}")
        if split in p.unfiltered_splits:  # the whole split, as loaded (extract.pool=unfiltered)
            df.to_parquet(out / f"{split}_unfiltered.parquet", index=False)
        chosen = [m[-1]["content"] for m in df["chosen"]]
        rejected = [m[-1]["content"] for m in df["rejected"]]
        keep, dropped = filter_rows(
            df["prompt"].tolist(),
            chosen,
            rejected,
            df["score_chosen"].tolist(),
            df["score_rejected"].tolist(),
            count_tokens,
            settings,
        )
        if not keep:
            raise ValueError(
                f"preprocess: the filter dropped all {len(df)} rows of split {split} of "
                f"{cfg.dataset.path} ({dropped}); check the data or preprocess.filter.*"
            )
        clean = df.iloc[keep].reset_index(drop=True)
        clean["chosen_content"] = [chosen[i] for i in keep]
        clean["rejected_content"] = [rejected[i] for i in keep]
        clean["response"] = clean["chosen_content"]
        clean["formatted_prompt"] = _format_prompts(clean["prompt"].tolist(), p, tokenizer)
        clean.to_parquet(out / f"{split}.parquet", index=False)
        counts[f"{split}_rows_in"] = len(df)
        counts[f"{split}_rows"] = len(clean)
        counts.update({f"{split}_dropped_{reason}": n for reason, n in dropped.items()})
        log.info(
            "[preprocess] %s: kept %d of %d rows (%s)",
            split,
            len(clean),
            len(df),
            ", ".join(f"{k}={v}" for k, v in dropped.items() if v),
        )
        if split == "test_prefs":
            subset = clean.head(int(p.test_subset_size))
            subset.to_parquet(out / "test_subset.parquet", index=False)
            counts["test_subset_rows"] = len(subset)
    return counts


def token_lengths(
    tokenizer, count_special_tokens: bool = False
) -> Callable[[list[str]], list[int]]:
    """A function: texts -> their token counts, as ``tokenizer`` counts.

    Without ``count_special_tokens`` a text's own tokens are counted; with it, also the special
    tokens the tokenizer adds around a text (Llama-3: BOS), i.e. ``len(tokenizer.encode(text))``.

    A fast tokenizer's Rust backend is called without offset tracking (``encode_batch_fast``),
    which gives the same ids about 1.7x faster than ``tokenizer(texts)`` on the benchmark input;
    tokenization is nearly all of this stage's time.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return lambda texts: [
            len(e.ids)
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


def _format_prompts(prompts: list[str], p: DictConfig, tokenizer) -> list[str]:
    if p.prompt_format == "plain":
        template = str(p.plain_template)  # read once: config access is slow in a loop
        return [format_prompt(x, template) for x in prompts]
    if p.prompt_format == "chat_template":
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": x}], tokenize=False, add_generation_prompt=True
            )
            for x in prompts
        ]
    raise ValueError(
        f"preprocess.prompt_format must be plain or chat_template, got {p.prompt_format!r}"
    )


# --------------------------------------------------------------------------------------------
# MT-Bench human judgments


def _mt_bench(cfg: DictConfig, out: Path) -> dict[str, int]:
    p = cfg.preprocess
    df = _load_split(cfg, cfg.dataset.split)
    _require_columns(df, MT_COLUMNS, f"split {cfg.dataset.split} of {cfg.dataset.path}")
    ties = df["winner"].astype(str).str.startswith("tie")
    judged = df[~ties]
    train_ids, test_ids = mt_question_split(
        block=int(p.mt_block_size),
        train_per_block=int(p.mt_train_per_block),
        first_question_only=bool(p.mt_first_question_only),
    )
    train = judged[judged["question_id"].isin(train_ids)].reset_index(drop=True)
    test = judged[judged["question_id"].isin(test_ids)].reset_index(drop=True)
    train.to_parquet(out / "train.parquet", index=False)
    test.to_parquet(out / "test.parquet", index=False)
    return {
        "rows_in": len(df),
        "dropped_tie": int(ties.sum()),
        "dropped_unassigned_question": len(judged) - len(train) - len(test),
        "train_rows": len(train),
        "test_rows": len(test),
        "train_questions": int(train["question_id"].nunique()),
        "test_questions": int(test["question_id"].nunique()),
    }
