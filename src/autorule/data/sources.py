"""Instruction sources: datasets read only for their instructions, each through one adapter shape.

The seed experiments draw prompts from datasets whose answers and labels they do not use: CLoud's
UltraFeedback and UltraInteract prompts, the ratings-vs-rankings study's Dolly, Self-Instruct and
Super-NaturalInstructions instructions, and AlpacaEval's instructions with text-davinci-003's
answers as the reference. An :class:`Adapter` says, for one of them, where it lives on the hub
(a split read with ``datasets``, or one file of the repository), which columns must hold text,
and how a row becomes one instruction. :func:`read_source` loads a source from its hub id or a
local folder laid out like the hub repository, checks every row and returns instruction rows
(``prompt``, ``prompt_id``, ``source`` and the adapter's extra columns). A bad copy fails with
the file, the row and the column.

A preprocess ``dataset=`` option mixes sources (``dataset.sources``: name -> location and row
limit) and may set aside held-out instructions unseen in training (``dataset.heldout``, with
:func:`unseen`); see :func:`autorule.stages.preprocess` and docs/feedback.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


class BadCell(ValueError):
    """A cell an adapter cannot read: its column and what is wrong with it."""

    def __init__(self, column: str, problem: str):
        super().__init__(f"column {column!r} {problem}")
        self.column, self.problem = column, problem


def text(row: Mapping[str, Any], column: str, *, empty_ok: bool = False) -> str:
    """The text in ``row[column]``: a string, non-empty unless ``empty_ok``."""
    value = row.get(column)
    if not isinstance(value, str):
        raise BadCell(column, f"must be text, got {type(value).__name__} {value!r:.40}")
    if not empty_ok and not value.strip():
        raise BadCell(column, "is empty")
    return value


def with_input(instruction: str, extra: str) -> str:
    """An instruction and its optional input (context), a blank line apart: the Alpaca format's
    two fields as one user turn."""
    return f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction.strip()


def _self_instruct(row: Mapping[str, Any]) -> str:
    instances = row.get("instances")
    if instances is None or not len(instances) or not isinstance(instances[0], Mapping):
        raise BadCell("instances", "must be a non-empty list of {input, output} objects")
    return with_input(text(row, "instruction"), text(instances[0], "input", empty_ok=True))


@dataclass(frozen=True)
class Adapter:
    """How one dataset becomes instructions."""

    name: str
    hub_id: str | None  # the hub repository (None: released elsewhere; give a local copy)
    instruction: Callable[[Mapping[str, Any]], str]  # row -> the instruction (raises BadCell)
    columns: tuple[str, ...]  # columns every row must have
    split: str | None = None  # a split read with ``datasets`` ...
    file: str | None = None  # ... or one JSON/JSONL file of the repository, read as rows
    id_column: str | None = None  # the row's id (None: its position)
    extra: Mapping[str, str] = field(default_factory=dict)  # output column -> source column
    local_dir: str = ""  # its folder in a folder of local copies (empty: its name)


ADAPTERS: dict[str, Adapter] = {
    # UltraFeedback's prompts (CLoud's first prompt source), from the binarized copy the uf
    # dataset reads; answers and scores are not used.
    "ultrafeedback": Adapter(
        "ultrafeedback",
        "HuggingFaceH4/ultrafeedback_binarized",
        lambda row: text(row, "prompt"),
        ("prompt", "prompt_id"),
        split="train_prefs",
        id_column="prompt_id",
        local_dir="ultrafeedback_binarized",
    ),
    # UltraInteract (CLoud's second prompt source): reasoning, maths and coding instructions.
    "ultrainteract": Adapter(
        "ultrainteract",
        "openbmb/UltraInteract_sft",
        lambda row: text(row, "instruction"),
        ("instruction", "id"),
        split="train",
        id_column="id",
    ),
    # Dolly 15k (sparse feedback): the instruction, then its context when there is one.
    "dolly": Adapter(
        "dolly",
        "databricks/databricks-dolly-15k",
        lambda row: with_input(text(row, "instruction"), text(row, "context", empty_ok=True)),
        ("instruction", "context", "category"),
        file="databricks-dolly-15k.jsonl",
    ),
    # Self-Instruct's 252 user-oriented instructions (sparse feedback), with their first
    # instance's input; released on GitHub (human_eval/), not on the hub: give a local copy.
    "self_instruct": Adapter(
        "self_instruct",
        None,
        _self_instruct,
        ("id", "instruction", "instances"),
        file="user_oriented_instructions.jsonl",
        id_column="id",
    ),
    # Super-NaturalInstructions v2 (sparse feedback): the task definition, then the input.
    "super_natural_instructions": Adapter(
        "super_natural_instructions",
        "Muennighoff/natural-instructions",
        lambda row: with_input(text(row, "definition"), text(row, "inputs")),
        ("task_name", "id", "definition", "inputs"),
        split="train",
        id_column="id",
    ),
    # AlpacaEval's 805 instructions with text-davinci-003's answers (its reference outputs).
    "alpaca_eval": Adapter(
        "alpaca_eval",
        "tatsu-lab/alpaca_eval",
        lambda row: text(row, "instruction"),
        ("instruction", "output", "generator", "dataset"),
        file="alpaca_eval.json",
        extra={"reference": "output", "generator": "generator", "dataset": "dataset"},
    ),
}


# --------------------------------------------------------------------------------------------
# Loading


class Split:
    """One split as read: its rows, and the files they came from (local folders only).

    The rows are a pandas frame (``df``) or an Arrow table (``table``), each made from the other
    on first use. Preprocess works on the table of a parquet split: UltraFeedback's message-list
    columns are nested (lists of {role, content}), and turning them into Python objects and
    back for the parquet writes cost more than all the rest of that stage but the tokenizer.
    """

    def __init__(self, name: str, source: str, rows, files: list[str]):
        self.name, self.source, self.files = name, source, files
        frame = isinstance(rows, pd.DataFrame)
        self._df, self._table = (rows, None) if frame else (None, rows)

    @property
    def df(self) -> pd.DataFrame:
        if self._df is None:
            self._df = self._table.to_pandas()
        return self._df

    @property
    def table(self):
        if self._table is None:
            import pyarrow as pa

            self._table = pa.Table.from_pandas(self._df, preserve_index=False)
        return self._table

    def __str__(self) -> str:
        files = f" (file {', '.join(self.files)})" if self.files else ""
        return f"split {self.name} of {self.source}{files}"

    def row(self, index: int) -> str:
        """Where row ``index`` of the split lives: its file and its row within that file."""
        import pyarrow.parquet as pq

        if len(self.files) == 1 and not self.files[0].endswith(".parquet"):
            return f"file {self.files[0]}, row {index}"
        start = 0
        for file in self.files:
            try:
                rows = pq.ParquetFile(file).metadata.num_rows
            except Exception:  # noqa: BLE001 - not parquet: name the split's row only
                break
            if index < start + rows:
                return f"row {index - start} of file {file} (row {index} of split {self.name})"
            start += rows
        return f"row {index} of {self}"


def load_split(path: str, split: str, revision: str | None = None, key: str = "") -> Split:
    """One split of the dataset at ``path`` (a hub id or a local folder in the hub's layout),
    with a clear error when it is not there; ``key`` names the setting that asked for it.

    A local folder's split is read from its own files only: given the whole folder, ``datasets``
    casts every split to the first one's columns and fails inside its builder
    (``DatasetGenerationError``) when one split's columns differ.
    """
    import datasets

    files: list[str] = []
    asked = f" (key {key})" if key else ""
    try:
        if Path(path).expanduser().is_dir():
            builder = datasets.load_dataset_builder(path)
            found = builder.config.data_files or {}
            if split not in found:
                raise ValueError(f"available splits: {sorted(found)}")
            files = [str(f) for f in found[split]]
            if all(f.endswith(".parquet") for f in files):
                return Split(split, path, _read_parquet(split, path, files), files)
            ds = datasets.load_dataset(path, data_files={split: files}, split=split)
        else:
            ds = datasets.load_dataset(path, split=split, revision=revision)
    except ValueError as err:  # datasets names the available splits in its message
        raise ValueError(f"dataset.path={path} has no split {split!r}{asked}: {err}") from err
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"dataset.path={path} could not be loaded{asked}: {err}. Give a hub id or a local "
            "folder laid out like the hub repository (data/<split>-00000-of-00001.parquet)"
        ) from err
    except datasets.exceptions.DatasetGenerationError as err:
        raise ValueError(
            f"split {split} of dataset.path={path} (files {files or 'from the hub'}) could not "
            f"be read: {err.__cause__ or err}"
        ) from err
    return Split(split, path, ds.with_format("arrow")[:], files)


def _read_parquet(split: str, path: str, files: list[str]):
    """A local split's parquet files as one Arrow table, read directly: ``datasets`` would first
    copy them into its own Arrow cache, which took longer than reading them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(file) for file in files]
    try:
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    except pa.ArrowInvalid as err:
        raise ValueError(
            f"split {split} of dataset.path={path} (files {files}) could not be read: its files "
            f"differ in their columns: {err}"
        ) from err


def load_file(path: str, name: str, revision: str | None = None, key: str = "") -> Split:
    """The file ``name`` of the repository at ``path`` (a local folder holding it, or a hub
    dataset id, fetched with ``huggingface_hub``), as one split of rows."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        file = folder / name
        if not file.is_file():
            raise FileNotFoundError(f"{key or 'dataset.path'}={path}: no file {name} in {folder}")
    else:
        from huggingface_hub import hf_hub_download

        try:
            file = Path(hf_hub_download(path, name, repo_type="dataset", revision=revision))
        except Exception as err:  # offline, no such file or revision: say what was fetched
            raise RuntimeError(
                f"{key or 'dataset.path'}={path}: could not fetch {name} from the hub ({err}); "
                "download the repository once and point the setting at its folder"
            ) from err
    return Split(name, path, pd.DataFrame(json_rows(file)), [str(file)])


def json_rows(file: Path) -> list[dict[str, Any]]:
    """The objects of a JSON list or a JSONL file; a line that is not JSON names its number."""
    import json

    content = file.read_text()
    if file.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(content.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"file {file}, line {number}: not JSON ({err})") from err
    else:
        try:
            rows = json.loads(content)
        except json.JSONDecodeError as err:
            raise ValueError(f"file {file}: not JSON ({err})") from err
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"file {file} must hold a list of objects (JSON) or one per line (JSONL)")
    return rows


def load(adapter: Adapter, path: str | None, revision: str | None = None, key: str = "") -> Split:
    """The rows of ``adapter``'s dataset at ``path`` (None: its hub id)."""
    location = path or adapter.hub_id
    if location is None:
        raise ValueError(
            f"{key or adapter.name}: {adapter.name} is not on the hub; download "
            f"{adapter.file} into a folder and name it ({key or 'the source'}.path)"
        )
    if adapter.file is not None:
        return load_file(str(location), adapter.file, revision, key)
    return load_split(str(location), str(adapter.split), revision, key)


def instructions(adapter: Adapter, data: Split) -> pd.DataFrame:
    """One row per dataset row: ``prompt`` (the instruction), ``prompt_id``
    (``<source>-<id>``), ``source`` and the adapter's extra columns. A missing column, or a
    cell that is not what the adapter reads, fails with its file, row and column."""
    df = data.df
    missing = [c for c in adapter.columns if c not in df.columns]
    if missing:
        raise ValueError(f"{data} lacks the columns {missing}; it has {list(df.columns)}")
    out = []
    for index, row in enumerate(df.to_dict("records")):
        try:
            prompt = adapter.instruction(row)
            extra = {name: text(row, column) for name, column in adapter.extra.items()}
            ident = index if adapter.id_column is None else row.get(adapter.id_column)
            if ident is None or (isinstance(ident, str) and not ident.strip()):
                raise BadCell(str(adapter.id_column), "is empty: every row needs an id")
        except BadCell as err:
            raise ValueError(f"{adapter.name}: {data.row(index)}, {err}") from err
        out.append(
            {"prompt": prompt, "prompt_id": f"{adapter.name}-{ident}", "source": adapter.name}
            | extra
        )
    return pd.DataFrame(out, columns=["prompt", "prompt_id", "source", *adapter.extra])


def read_source(
    name: str, path: str | None, revision: str | None = None, max_rows: int | None = None
) -> pd.DataFrame:
    """The instruction rows of source ``name`` (an :data:`ADAPTERS` key) at ``path``, the first
    ``max_rows`` only when given."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown instruction source {name!r}; known: {sorted(ADAPTERS)}")
    adapter = ADAPTERS[name]
    rows = instructions(adapter, load(adapter, path, revision, f"dataset.sources.{name}"))
    return rows if max_rows is None else rows.head(int(max_rows))


def location(dataset: Mapping[str, Any], name: str, section: Mapping[str, Any]) -> str | None:
    """Where source ``name`` of a mixed dataset is read: its own ``path`` when set, else
    ``<dataset.path>/<name>`` when the dataset reads local copies (``dataset.path`` a folder:
    the tiny profile's bundled data), else its ``hub_id`` (None: the adapter's)."""
    if section.get("path"):
        return str(section["path"])
    adapter = ADAPTERS[name]
    if dataset.get("path"):
        return str(Path(str(dataset["path"])) / (adapter.local_dir or adapter.name))
    return section.get("hub_id") or adapter.hub_id


def entries(dataset: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(entry name, adapter name, section) of every source and held-out set of a dataset."""
    found = [(name, name, section) for name, section in (dataset.get("sources") or {}).items()]
    for name, section in (dataset.get("heldout") or {}).items():
        found.append((name, str(section.get("adapter") or name), section))
    return found


# --------------------------------------------------------------------------------------------
# Mixing and held-out instructions

_SPACE = re.compile(r"\s+")


def normalise(instruction: str) -> str:
    """An instruction as compared across datasets: case folded, white space collapsed."""
    return _SPACE.sub(" ", instruction).strip().casefold()


def drop_duplicates(rows: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows with each instruction (:func:`normalise`) kept once, first seen first; and how
    many were dropped."""
    keys = rows["prompt"].map(normalise)
    kept = rows[~keys.duplicated()].reset_index(drop=True)
    return kept, len(rows) - len(kept)


@dataclass
class Unseen:
    """The held-out rows unseen in training, and why the others were dropped."""

    rows: pd.DataFrame
    dropped_dataset: int  # rows from a subset that is itself a training source
    dropped_instruction: int  # rows whose instruction a training row has too


def unseen(heldout: pd.DataFrame, training: Sequence[str], drop_datasets: Sequence[str]) -> Unseen:
    """The held-out instructions unseen in training, by two rules applied in order:

    1. a row whose ``dataset`` is in ``drop_datasets`` goes: that subset is a training source
       (AlpacaEval's ``selfinstruct`` rows are Self-Instruct's 252 user-oriented instructions,
       so 805 - 252 = 553 remain, the count of Bansal et al.);
    2. a row whose instruction (:func:`normalise`) equals a training instruction goes.
    """
    drop = set(drop_datasets)
    by_dataset = heldout["dataset"].isin(drop) if drop else pd.Series(False, index=heldout.index)
    seen = {normalise(t) for t in training}
    by_instruction = ~by_dataset & heldout["prompt"].map(normalise).isin(seen)
    kept = heldout[~by_dataset & ~by_instruction].reset_index(drop=True)
    return Unseen(kept, int(by_dataset.sum()), int(by_instruction.sum()))
