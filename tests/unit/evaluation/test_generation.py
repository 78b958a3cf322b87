"""Pure parts of sampling: prompt sets, later turns, stop strings, best-of-N choice, backends."""

import json

import pytest

from autorule.evaluation import prompt_sets
from autorule.evaluation.generation import (
    best_index,
    cut_at_stop,
    later_turn_prompt,
    pick_backend,
)

TEMPLATE = "<|user|>{prompt}<|assistant|>"


def test_later_turns_follow_the_plain_template_without_separators():
    assert later_turn_prompt(TEMPLATE, ["q1"], []) == "<|user|>q1<|assistant|>"
    assert (
        later_turn_prompt(TEMPLATE, ["q1", "q2"], ["a1"])
        == "<|user|>q1<|assistant|>a1<|user|>q2<|assistant|>"
    )


def test_stop_strings_cut_an_answer_at_the_next_user_turn():
    assert cut_at_stop("fine.<|user|>more", ["<|user|>"]) == ("fine.", True)
    assert cut_at_stop("fine.", ["<|user|>"]) == ("fine.", False)


def test_best_index_takes_the_first_best_and_ignores_nan():
    assert best_index([0.1, 0.9, 0.9, 0.2]) == 1
    assert best_index([float("nan"), -1.0]) == 1


def test_pick_backend():
    assert pick_backend("hf") == "hf"
    with pytest.raises(ValueError, match="generate.backend"):
        pick_backend("tgi")


def test_prompt_set_kinds():
    assert prompt_sets.kind("test_subset") == "split"
    assert prompt_sets.kind("alpaca_eval") == "alpaca_eval"
    assert prompt_sets.kind("/data/question.jsonl") == "file"
    assert prompt_sets.kind("prompts.json") == "file"


def test_prompt_files_in_each_format(tmp_path):
    mt = tmp_path / "question.jsonl"
    mt.write_text(
        json.dumps({"question_id": 81, "category": "writing", "turns": ["q1", "q2"]}) + "\n"
    )
    [item] = prompt_sets.from_file(mt)
    assert (item.id, item.turns, item.meta) == (
        "81",
        ["q1", "q2"],
        {"category": "writing", "question_id": 81},
    )
    alpaca = tmp_path / "alpaca_eval.json"
    alpaca.write_text(json.dumps([{"instruction": "Name a colour.", "dataset": "oasst"}]))
    [item] = prompt_sets.from_file(alpaca)
    assert item.turns == ["Name a colour."] and item.meta == {"dataset": "oasst"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"instruction": "x"}', "list of objects"),
        ('[{"question": "x"}]', "none of the fields"),
        ("[1, 2]", "not an object"),
        ("not json", "not valid JSON"),
    ],
)
def test_bad_prompt_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        prompt_sets.from_file(path)
    assert str(path) in str(err.value)


def test_a_missing_split_names_the_known_ones(tmp_path):
    (tmp_path / "test_prefs.parquet").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="splits: test_prefs"):
        prompt_sets.from_split(tmp_path, "test_subset")
