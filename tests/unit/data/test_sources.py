"""Instruction sources: each adapter from a local copy in its hub layout (known rows in, exact
rows out), bad copies named by file, row and column, and the unseen-instruction rule."""

import json

import pandas as pd
import pytest

from autorule.core.config import REPO_ROOT
from autorule.data import sources
from autorule.data.synthetic import make_alpaca_eval, make_dolly, make_self_instruct


def write_parquet(folder, rows):
    (folder / "data").mkdir(parents=True)
    path = folder / "data" / "train-00000-of-00001.parquet"
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ultrainteract_rows_become_instructions(tmp_path):
    write_parquet(
        tmp_path,
        [
            {
                "task": "Math_CoT",
                "dataset": "gsm8k",
                "instruction": "Add 2 and 3.",
                "response": "5",
                "id": "a1",
                "parent_id": "p",
            },
            {
                "task": "Coding",
                "dataset": "mbpp",
                "instruction": "Sort a list.",
                "response": "sorted(x)",
                "id": "a2",
                "parent_id": "p",
            },
        ],
    )
    rows = sources.read_source("ultrainteract", str(tmp_path))
    assert rows.to_dict("records") == [
        {"prompt": "Add 2 and 3.", "prompt_id": "ultrainteract-a1", "source": "ultrainteract"},
        {"prompt": "Sort a list.", "prompt_id": "ultrainteract-a2", "source": "ultrainteract"},
    ]


def test_dolly_joins_the_context_and_counts_rows_by_position(tmp_path):
    write_jsonl(
        tmp_path / "databricks-dolly-15k.jsonl",
        [
            {
                "instruction": "Name a fruit.",
                "context": "",
                "response": "Apple",
                "category": "open_qa",
            },
            {
                "instruction": "Summarise this.",
                "context": "Cats sleep a lot.",
                "response": "Cats nap.",
                "category": "summarization",
            },
        ],
    )
    rows = sources.read_source("dolly", str(tmp_path), max_rows=2)
    assert rows["prompt"].tolist() == ["Name a fruit.", "Summarise this.\n\nCats sleep a lot."]
    assert rows["prompt_id"].tolist() == ["dolly-0", "dolly-1"]


def test_self_instruct_takes_the_first_instance_input(tmp_path):
    write_jsonl(
        tmp_path / "user_oriented_instructions.jsonl",
        [
            {
                "id": "user_oriented_task_0",
                "motivation_app": "Gmail",
                "instruction": "Reply to this email.",
                "instances": [{"input": "Hi, are you free?", "output": "Yes."}],
            },
            {
                "id": "user_oriented_task_1",
                "motivation_app": "Notion",
                "instruction": "List three goals.",
                "instances": [{"input": "", "output": "..."}],
            },
        ],
    )
    rows = sources.read_source("self_instruct", str(tmp_path))
    assert rows["prompt"].tolist() == [
        "Reply to this email.\n\nHi, are you free?",
        "List three goals.",
    ]
    assert rows["prompt_id"].tolist() == [
        "self_instruct-user_oriented_task_0",
        "self_instruct-user_oriented_task_1",
    ]


def test_super_natural_instructions_put_the_definition_before_the_input(tmp_path):
    write_parquet(
        tmp_path,
        [
            {
                "task_name": "task1",
                "id": "task1-7",
                "definition": "Say the topic.",
                "inputs": "Sentence: bread rises.",
                "targets": "baking",
            }
        ],
    )
    rows = sources.read_source("super_natural_instructions", str(tmp_path))
    assert rows.to_dict("records") == [
        {
            "prompt": "Say the topic.\n\nSentence: bread rises.",
            "prompt_id": "super_natural_instructions-task1-7",
            "source": "super_natural_instructions",
        }
    ]


def test_alpaca_eval_keeps_davinci_answers_as_references(tmp_path):
    (tmp_path / "alpaca_eval.json").write_text(
        json.dumps(
            [
                {
                    "instruction": "Why is the sky blue?",
                    "output": "Rayleigh scattering.",
                    "generator": "text_davinci_003",
                    "dataset": "helpful_base",
                }
            ]
        )
    )
    rows = sources.read_source("alpaca_eval", str(tmp_path))
    assert rows.to_dict("records") == [
        {
            "prompt": "Why is the sky blue?",
            "prompt_id": "alpaca_eval-0",
            "source": "alpaca_eval",
            "reference": "Rayleigh scattering.",
            "generator": "text_davinci_003",
            "dataset": "helpful_base",
        }
    ]


def test_the_bundled_copies_read_back_as_generated():
    data = REPO_ROOT / "data"
    dolly = sources.read_source("dolly", str(data / "dolly"))
    first = make_dolly(0).iloc[0]
    assert dolly["prompt"][0] == sources.with_input(first["instruction"], first["context"])
    assert len(sources.read_source("self_instruct", str(data / "self_instruct"))) == len(
        make_self_instruct(0)
    )
    alpaca = sources.read_source("alpaca_eval", str(data / "alpaca_eval"))
    assert alpaca["reference"].tolist() == [r["output"] for r in make_alpaca_eval(0)]
    assert len(sources.read_source("ultrainteract", str(data / "ultrainteract"))) == 24
    assert (
        len(
            sources.read_source(
                "super_natural_instructions", str(data / "super_natural_instructions")
            )
        )
        == 12
    )


def test_a_bad_jsonl_row_is_named_by_file_row_and_column(tmp_path):
    path = write_jsonl(
        tmp_path / "databricks-dolly-15k.jsonl",
        [
            {"instruction": "Fine.", "context": "", "response": "", "category": "open_qa"},
            {"instruction": None, "context": "", "response": "", "category": "open_qa"},
        ],
    )
    with pytest.raises(ValueError) as err:
        sources.read_source("dolly", str(tmp_path))
    assert f"file {path}, row 1" in str(err.value)
    assert "column 'instruction'" in str(err.value)


def test_a_bad_parquet_row_is_named_by_file_row_and_column(tmp_path):
    path = write_parquet(
        tmp_path,
        [
            {"task_name": "t", "id": "t-0", "definition": "Do it.", "inputs": "x"},
            {"task_name": "t", "id": "t-1", "definition": "Do it.", "inputs": "y"},
            {"task_name": "t", "id": "t-2", "definition": "  ", "inputs": "z"},
        ],
    )
    with pytest.raises(ValueError) as err:
        sources.read_source("super_natural_instructions", str(tmp_path))
    assert f"row 2 of file {path}" in str(err.value)
    assert "column 'definition' is empty" in str(err.value)


def test_a_missing_column_names_the_file(tmp_path):
    path = write_parquet(tmp_path, [{"task": "t", "instruction": "Add.", "response": "x"}])
    with pytest.raises(ValueError, match=r"lacks the columns \['id'\]") as err:
        sources.read_source("ultrainteract", str(tmp_path))
    assert str(path) in str(err.value)


def test_self_instruct_without_a_copy_asks_for_one():
    with pytest.raises(ValueError, match="not on the hub"):
        sources.read_source("self_instruct", None)


def test_unseen_drops_training_subsets_then_training_instructions():
    heldout = pd.DataFrame(
        {
            "prompt": ["Write a haiku.", "Plan a  TRIP.", "Name a colour.", "Reply to my boss."],
            "dataset": ["koala", "oasst", "vicuna", "selfinstruct"],
        }
    )
    kept = sources.unseen(heldout, ["plan a trip.", "Reply to my boss."], ["selfinstruct"])
    assert kept.rows["prompt"].tolist() == ["Write a haiku.", "Name a colour."]
    assert (kept.dropped_dataset, kept.dropped_instruction) == (1, 1)


def test_duplicates_across_sources_are_kept_once():
    rows = pd.DataFrame({"prompt": ["A b.", "a  B.", "C."], "source": ["x", "y", "y"]})
    kept, dropped = sources.drop_duplicates(rows)
    assert kept["source"].tolist() == ["x", "y"] and dropped == 1


def test_a_source_off_the_hub_without_a_copy_is_refused_before_any_read():
    from autorule.core.config import ConfigError, compose
    from autorule.stages import preprocess

    cfg = compose(["stage=preprocess", "dataset=sparse_feedback", "profile=paper"])
    with pytest.raises(ConfigError, match=r"dataset.sources.self_instruct.path"):
        preprocess.check(cfg)
    cfg = compose(
        [
            "stage=preprocess",
            "dataset=sparse_feedback",
            "profile=paper",
            "dataset.sources.self_instruct.path=/data/self_instruct",
        ]
    )
    preprocess.check(cfg)
