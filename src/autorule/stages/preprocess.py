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

Rubric datasets (:mod:`autorule.data.rubrics`, docs/rubric.md) become ``<split>.jsonl`` files of
rubric datapoints, every field written out: ``dataset=prometheus`` converts Feedback-Collection
(split ``dataset.split``; each instruction comes five times there, once per graded response, so
exact duplicates are dropped and counted), ``dataset=addition`` generates the addition demo
(``preprocess.addition``; nothing is read). The grpo stage trains on them with
``grpo.rubric_dataset``. ``preprocess.rubric.dedupe=false`` keeps every Feedback-Collection row
(the rubric recipe's data: each instruction five times).

Instruction datasets (a ``dataset.sources`` section: ``dataset=ultrainteract``, ``dolly``,
``self_instruct``, ``super_natural_instructions``, and the mixes ``cloud_prompts`` and
``sparse_feedback``) are read for their instructions only, each source through its adapter of
:mod:`autorule.data.sources`, and written as ``train.parquet`` (``prompt``, ``prompt_id``,
``source``, ``formatted_prompt``; the first ``max_rows`` of each source, an instruction repeated
across sources kept once). Each entry of ``dataset.heldout`` becomes ``<name>.parquet``: its
instructions unseen in training (:func:`autorule.data.sources.unseen`), with the reference
answer the source holds, and the count of each rule's drops in the manifest.

Counts in the manifest: rows in and out per split and rows dropped per filter reason.

A local folder is read one split at a time (each split's files on their own), so a split whose
columns differ from the others fails the stage's own column check, naming the split and its file,
instead of inside ``datasets``; a row whose message list is empty or malformed is reported with
its split, file, row and column.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from autorule.core.artifacts import StageJob
from autorule.core.config import ConfigError, check_choice, check_number, check_paths
from autorule.core.stage import StageSpec
from autorule.data import rubrics, sources
from autorule.data.filters import FilterSettings, filter_rows, format_prompt, mt_question_split
from autorule.data.models import load_tokenizer
from autorule.data.sources import Split
from autorule.data.token_counts import length_counter

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


# preprocess settings that only one dataset reads; the other datasets' artifacts ignore them.
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
_OWN_KEYS = {
    "uf": _UF_ONLY,
    "mt": _MT_ONLY,
    "addition": ("preprocess.addition",),
    "prometheus": ("dataset.split", "preprocess.rubric"),
}
# Where a source of an instruction dataset is read: its fingerprint (content or hub id and
# revision) identifies the data instead.
_SOURCE_LOCATION = ("path", "hub_id", "revision")
# Rubric datasets become JSONL, which the grpo stage reads with grpo.rubric_dataset.
DATASETS = ("uf", "mt", *rubrics.RUBRIC_DATASETS)


def is_instructions(cfg: DictConfig) -> bool:
    """Whether the dataset is read for its instructions only (it has ``dataset.sources``)."""
    return cfg.dataset.get("sources") is not None


def ignored_for(cfg: DictConfig) -> tuple[str, ...]:
    """The settings that only other datasets read (their own keys are kept), and where each
    source of an instruction dataset is read (its fingerprint stands in)."""
    own = set(_OWN_KEYS.get(cfg.dataset.name, ()))
    if is_instructions(cfg):  # formatted_prompt is written in the plain template
        own.add("preprocess.plain_template")
    others = (key for name, keys in _OWN_KEYS.items() if name != cfg.dataset.name for key in keys)
    located = tuple(
        f"dataset.{group}.{name}.{key}"
        for group in ("sources", "heldout")
        for name in (cfg.dataset.get(group) or {})
        for key in _SOURCE_LOCATION
    )
    return tuple(dict.fromkeys(key for key in others if key not in own)) + located


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
        "preprocess.count_by_pieces",
        "dataset.path",
        "dataset.hub_id",
        "dataset.local_copy",
        "dataset.revision",
    ),
    ignore_when=ignored_for,
    fingerprint=_fingerprint,
    version=2,
)


PROMPT_FORMATS = ("plain", "chat_template")


def check(cfg: DictConfig) -> None:
    """Refuses settings that cannot work before any data is read."""
    check_paths(cfg)
    p = cfg.preprocess
    if is_instructions(cfg):
        known = sorted(sources.ADAPTERS)
        for group in ("sources", "heldout"):
            for name, section in (cfg.dataset.get(group) or {}).items():
                adapter = section.get("adapter") or name
                check_choice(adapter, f"dataset.{group}.{name}.adapter", known)
                check_number(
                    section.get("max_rows"), f"dataset.{group}.{name}.max_rows", low=1, none_ok=True
                )
                if sources.location(cfg.dataset, adapter, section) is None:
                    raise ConfigError(
                        f"dataset.{group}.{name}.path=null and {adapter} is not on the hub: "
                        f"download {sources.ADAPTERS[adapter].file} into a folder and set "
                        f"dataset.{group}.{name}.path to it"
                    )
        if not cfg.dataset.sources:
            raise ConfigError(f"dataset={cfg.dataset.name}: dataset.sources names no source")
        return
    check_choice(cfg.dataset.name, "dataset.name", DATASETS)
    if cfg.dataset.name == "addition":
        for key in ("num_train", "num_test", "max_operand"):
            check_number(p.addition[key], f"preprocess.addition.{key}", low=1)
    elif cfg.dataset.name == "prometheus":
        # the split is checked when it is read (datasets names the ones there are)
        check_choice(p.rubric.format, "preprocess.rubric.format", rubrics.PROMETHEUS_FORMATS)
    elif cfg.dataset.name == "uf":
        check_number(p.filter.max_tokens, "preprocess.filter.max_tokens", low=1)
        check_number(p.test_subset_size, "preprocess.test_subset_size", low=1)
        check_number(p.batch_size, "preprocess.batch_size", low=1)
        check_choice(p.prompt_format, "preprocess.prompt_format", PROMPT_FORMATS)
        if "test_prefs" not in list(p.splits):
            raise ConfigError(
                f"preprocess.splits={list(p.splits)} must include test_prefs: test_subset is "
                "drawn from it"
            )
    else:
        check_number(p.mt_block_size, "preprocess.mt_block_size", low=2)
        check_number(
            p.mt_train_per_block,
            "preprocess.mt_train_per_block",
            low=1,
            high=int(p.mt_block_size) - 1,
            meaning=" (leading questions of each block that train; the rest test)",
        )


def run(cfg: DictConfig) -> Path:
    check(cfg)
    with StageJob(cfg, SPEC.name) as job:
        if job.done:
            return job.path
        builders = {
            "uf": _ultrafeedback,
            "mt": _mt_bench,
            "addition": _addition,
            "prometheus": _prometheus,
        }
        build = _instructions if is_instructions(cfg) else builders[cfg.dataset.name]
        counts = build(cfg, job.workdir)
        return job.commit(counts)


# --------------------------------------------------------------------------------------------
# Loading


def _load_split(cfg: DictConfig, split: str) -> Split:
    """One split of ``dataset.path`` (:func:`autorule.data.sources.load_split`)."""
    return sources.load_split(
        str(cfg.dataset.path), split, cfg.dataset.revision, "preprocess.splits / dataset.split"
    )


def _require_columns(split: Split, columns) -> None:
    """Every column present and filled (a null would otherwise pass as a row the filter
    silently drops)."""
    import pyarrow.compute as pc

    table = split.table
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{split} lacks the columns {missing}; it has {table.column_names}")
    for column in columns:
        values = table.column(column)
        if values.null_count:
            first = pc.index(pc.is_null(values), True).as_py()
            raise ValueError(
                f"{split} has missing values in column {column!r} ({values.null_count} rows), "
                f"first at {split.row(first)}"
            )


def final_messages(split: Split, column: str) -> list[str]:
    """The content of the last message of each row's ``column`` (a list of messages); a row
    whose list is empty or malformed is reported by split, file, row and column."""
    fast = _final_contents(split.table.column(column))
    if fast is not None:
        return fast
    out = []  # some row is malformed: find the first one, and say where it is
    for index, conversation in enumerate(split.table.column(column).to_pylist()):
        last = conversation[-1] if conversation is not None and len(conversation) else None
        content = last.get("content") if isinstance(last, dict) else None
        if not isinstance(content, str):
            problem = "is empty" if last is None else "does not end with a message with content"
            raise ValueError(
                f"column {column!r} at {split.row(index)} {problem}: every row needs a list of "
                "{role, content} messages"
            )
        out.append(content)
    return out


def _final_contents(conversations) -> list[str] | None:
    """The content of the last message of every row, read from the Arrow column without
    building the message lists in Python; None when a row is null, empty or has no string
    content there (:func:`final_messages` then names it)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    conversations = conversations.combine_chunks()
    if not pa.types.is_list(conversations.type) and not pa.types.is_large_list(conversations.type):
        return None
    lengths = pc.list_value_length(conversations)
    if conversations.null_count or pc.min(lengths).as_py() in (0, None):
        return None
    messages = pc.list_flatten(conversations)
    if not pa.types.is_struct(messages.type) or messages.type.get_field_index("content") < 0:
        return None
    last = np.cumsum(lengths.to_numpy()) - 1
    contents = pc.struct_field(messages.take(pa.array(last)), "content")
    if not pa.types.is_string(contents.type) and not pa.types.is_large_string(contents.type):
        return None
    if contents.null_count:
        return None
    return contents.to_pylist()


# --------------------------------------------------------------------------------------------
# UltraFeedback


def _ultrafeedback(cfg: DictConfig, out: Path) -> dict[str, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = cfg.preprocess
    settings = FilterSettings(**p.filter)
    tokenizer = load_tokenizer(cfg)
    batch = int(p.batch_size)

    # Counts are of each text alone, with the special tokens the tokenizer adds (Llama-3: BOS)
    # only under preprocess.filter.count_special_tokens (the released code's count).
    # Token counts are memoised by text: on the hub copy the SFT and preference splits share
    # their prompts and chosen answers, so each distinct text is tokenized once.
    known: dict[str, int] = {}

    lengths = length_counter(
        tokenizer, settings.count_special_tokens, settings.max_tokens, bool(p.count_by_pieces)
    )

    def count_tokens(texts: list[str]) -> list[int]:
        todo = list(dict.fromkeys(t for t in texts if t not in known))
        for i in range(0, len(todo), batch):
            known.update(zip(todo[i : i + batch], lengths(todo[i : i + batch]), strict=True))
        return [known[t] for t in texts]

    unknown = [split for split in p.unfiltered_splits if split not in p.splits]
    if unknown:
        raise ConfigError(
            f"preprocess.unfiltered_splits names {unknown}, which preprocess.splits "
            f"({list(p.splits)}) does not load"
        )
    counts: dict[str, int] = {}
    for split in p.splits:
        data = _load_split(cfg, split)
        _require_columns(data, UF_COLUMNS)
        table = data.table
        if split in p.unfiltered_splits:  # the whole split, as loaded (extract.pool=unfiltered)
            pq.write_table(table, out / f"{split}_unfiltered.parquet")
        chosen = final_messages(data, "chosen")
        rejected = final_messages(data, "rejected")
        prompts = table.column("prompt").to_pylist()
        keep, dropped = filter_rows(
            prompts,
            chosen,
            rejected,
            table.column("score_chosen").to_pylist(),
            table.column("score_rejected").to_pylist(),
            count_tokens,
            settings,
        )
        if not keep:
            raise ValueError(
                f"preprocess: the filter dropped all {len(table)} rows of split {split} of "
                f"{cfg.dataset.path} ({dropped}); check the data or preprocess.filter.*"
            )
        chosen_kept = pa.array([chosen[i] for i in keep], pa.string())
        added = {
            "chosen_content": chosen_kept,
            "rejected_content": pa.array([rejected[i] for i in keep], pa.string()),
            "response": chosen_kept,
            "formatted_prompt": pa.array(
                _format_prompts([prompts[i] for i in keep], p, tokenizer), pa.string()
            ),
        }
        clean = table.take(pa.array(keep, pa.int64()))
        for name, column in added.items():
            if name in clean.column_names:  # a column of that name in the input is replaced
                clean = clean.drop_columns([name])
            clean = clean.append_column(name, column)
        pq.write_table(clean, out / f"{split}.parquet")
        counts[f"{split}_rows_in"] = len(table)
        counts[f"{split}_rows"] = len(clean)
        counts.update({f"{split}_dropped_{reason}": n for reason, n in dropped.items()})
        log.info(
            "[preprocess] %s: kept %d of %d rows (%s)",
            split,
            len(clean),
            len(table),
            ", ".join(f"{k}={v}" for k, v in dropped.items() if v),
        )
        if split == "test_prefs":
            subset = clean.slice(0, int(p.test_subset_size))
            pq.write_table(subset, out / "test_subset.parquet")
            counts["test_subset_rows"] = len(subset)
    return counts


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
    raise ValueError(f"preprocess.prompt_format must be one of {PROMPT_FORMATS}")


# --------------------------------------------------------------------------------------------
# MT-Bench human judgments


def _mt_bench(cfg: DictConfig, out: Path) -> dict[str, int]:
    p = cfg.preprocess
    data = _load_split(cfg, cfg.dataset.split)
    _require_columns(data, MT_COLUMNS)
    df = data.df
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


# --------------------------------------------------------------------------------------------
# Rubric data


def _addition(cfg: DictConfig, out: Path) -> dict[str, int]:
    """The rubric recipe's addition demo, generated from ``preprocess.addition``."""
    section = cfg.preprocess.addition
    train, test = rubrics.addition_datapoints(
        int(section.num_train), int(section.num_test), int(section.seed), int(section.max_operand)
    )
    return {
        "train_rows": rubrics.write_jsonl(out / "train.jsonl", train),
        "test_rows": rubrics.write_jsonl(out / "test.jsonl", test),
    }


def _prometheus(cfg: DictConfig, out: Path) -> dict[str, int]:
    """Feedback-Collection's rows as rubric datapoints, exact duplicates dropped unless
    ``preprocess.rubric.dedupe=false`` (the recipe keeps every row)."""
    split = str(cfg.dataset.split)
    settings = cfg.preprocess.rubric
    data = _load_split(cfg, split)
    _require_columns(data, rubrics.PROMETHEUS_COLUMNS)
    converted = [
        rubrics.prometheus_datapoint(row, str(settings.format))
        for row in data.df.to_dict("records")
    ]
    kept = rubrics.dedupe(converted) if settings.dedupe else converted
    log.info(
        "[preprocess] prometheus %s: %d datapoints from %d rows (%d duplicates dropped)",
        split,
        len(kept),
        len(converted),
        len(converted) - len(kept),
    )
    return {
        f"{split}_rows_in": len(converted),
        f"{split}_dropped_duplicate": len(converted) - len(kept),
        f"{split}_rows": rubrics.write_jsonl(out / f"{split}.jsonl", kept),
    }


# --------------------------------------------------------------------------------------------
# Instruction datasets


def _instructions(cfg: DictConfig, out: Path) -> dict[str, int]:
    """The training instructions of every source of ``dataset.sources`` in ``train.parquet``;
    each ``dataset.heldout`` entry's instructions unseen in them in ``<name>.parquet``."""
    dataset = cfg.dataset
    counts: dict[str, int] = {}
    parts = []
    for name, section in dataset.sources.items():
        rows = sources.read_source(
            name,
            sources.location(dataset, name, section),
            section.get("revision"),
            section.get("max_rows"),
        )
        counts[f"{name}_rows"] = len(rows)
        parts.append(rows)
    train, duplicates = sources.drop_duplicates(pd.concat(parts, ignore_index=True))
    train["formatted_prompt"] = [
        format_prompt(p, str(cfg.preprocess.plain_template)) for p in train["prompt"]
    ]
    train.to_parquet(out / "train.parquet", index=False)
    counts.update(train_rows=len(train), train_dropped_duplicate=duplicates)
    log.info("[preprocess] %s: %d instructions (%s)", dataset.name, len(train), counts)
    for name, section in (dataset.get("heldout") or {}).items():
        adapter = str(section.get("adapter") or name)
        rows = sources.read_source(
            adapter,
            sources.location(dataset, adapter, section),
            section.get("revision"),
            section.get("max_rows"),
        )
        kept = sources.unseen(
            rows, train["prompt"].tolist(), list(section.get("drop_datasets") or [])
        )
        kept.rows.to_parquet(out / f"{name}.parquet", index=False)
        counts.update(
            {
                f"{name}_rows_in": len(rows),
                f"{name}_dropped_training_dataset": kept.dropped_dataset,
                f"{name}_dropped_training_instruction": kept.dropped_instruction,
                f"{name}_rows": len(kept.rows),
            }
        )
        log.info(
            "[preprocess] %s: %d of %d instructions unseen in training (%d dropped as a training "
            "subset %s, %d as a training instruction)",
            name,
            len(kept.rows),
            len(rows),
            kept.dropped_dataset,
            list(section.get("drop_datasets") or []),
            kept.dropped_instruction,
        )
    return counts
