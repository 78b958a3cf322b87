"""feedback_eval's references: AlpacaEval's text-davinci-003 answers matched by instruction."""

import json

import pytest

from autorule.core.config import compose
from autorule.stages import feedback_eval


def generate_folder(folder, prompts):
    """A generate artifact's candidates and responses for ``prompts`` (two candidates each)."""
    folder.mkdir()
    with open(folder / "responses.jsonl", "w") as f:
        for i, prompt in enumerate(prompts):
            f.write(json.dumps({"id": str(i), "turns": [prompt], "responses": ["c0"]}) + "\n")
    with open(folder / "candidates.jsonl", "w") as f:
        for i, _ in enumerate(prompts):
            row = {"id": str(i), "candidates": ["c0", "c1"], "scores": [0.0, 1.0]}
            f.write(json.dumps(row) + "\n")
    return folder


@pytest.fixture
def alpaca(tmp_path):
    folder = tmp_path / "alpaca"
    folder.mkdir()
    rows = [
        {
            "instruction": "Name a bird.",
            "output": "A robin.",
            "generator": "text_davinci_003",
            "dataset": "koala",
        },
        {
            "instruction": "Add 2 and 2.",
            "output": "4",
            "generator": "text_davinci_003",
            "dataset": "vicuna",
        },
    ]
    (folder / "alpaca_eval.json").write_text(json.dumps(rows))
    return folder


def test_davinci_answers_are_matched_by_instruction(tmp_path, alpaca):
    cfg = compose(
        [
            "feedback_eval.reference=alpaca_eval_davinci003",
            f"feedback_eval.alpaca_eval.path={alpaca}",
        ]
    )
    name, answers = feedback_eval.reference_answers(cfg)
    assert (name, answers) == (
        "alpaca_eval_davinci003",
        {"Name a bird.": "A robin.", "Add 2 and 2.": "4"},
    )
    folder = generate_folder(tmp_path / "picks", ["Add 2 and 2.", "Name a bird."])
    data = feedback_eval.picks_and_references(folder, [1, 2], (name, answers))
    assert data["references"] == ["4", "A robin."]
    assert data["reference_source"] == "alpaca_eval_davinci003 (2 instructions matched)"
    assert data["picks"][2] == ["c1", "c1"]
    other = generate_folder(tmp_path / "other", ["Name a fish."])
    with pytest.raises(ValueError, match="no answer for 1 of the 1 prompts"):
        feedback_eval.picks_and_references(other, [1], (name, answers))


def test_the_reference_is_fingerprinted_by_the_copy_it_reads(alpaca):
    cfg = compose(
        [
            "feedback_eval.reference=alpaca_eval_davinci003",
            f"feedback_eval.alpaca_eval.path={alpaca}",
        ]
    )
    found = feedback_eval.fingerprint(cfg)["reference"]
    assert list(found["local_files"]) == ["alpaca_eval.json"]
