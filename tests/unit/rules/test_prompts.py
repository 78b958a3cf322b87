"""The extract stage's prompt sets rendered on literal inputs, and how merge prompts are sized."""

import pytest
from omegaconf import OmegaConf

from autorule.core.config import CONF_DIR
from autorule.data.pairs import Pair
from autorule.rules.prompts import CHARS_PER_TOKEN, approx_tokens, fill, pack_rules, render_rules
from autorule.stages.extract import extract_request, reason_request


def prompt_set(name: str):
    return OmegaConf.load(CONF_DIR / "prompts" / f"{name}.yaml")


def conv(prompt, answer):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


PAIR = Pair("uf-00000", conv("Name a prime.", "Seven."), conv("Name a prime.", "Nine."), "A")


def test_paper_reasoner_shows_labelled_conversations_and_the_winner_in_its_own_block():
    [message] = reason_request(prompt_set("paper").reasoner, PAIR)
    text = message["content"]
    assert message["role"] == "user"
    a, b = text.index("[Conversation A]\nUser:\nName a prime."), text.index("[Conversation B]")
    assert a < text.index("Seven.") < b < text.index("Nine.")
    assert "[Preferred conversation]: A\n" in text  # the winner, on a line of its own
    assert text.index("Nine.") < text.index("[Preferred conversation]")
    for aspect in ("clear", "coherent", "helpful", "tone", "quality"):
        assert aspect in text


def test_paper_extractor_names_the_winner_and_shows_few_shot_rules():
    [message] = extract_request(prompt_set("paper").extractor, "B was kinder.", "B")
    text = message["content"]
    assert "preferred Conversation B to the other one" in text
    examples = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(examples) == 3
    assert all(line.startswith("- The assistant's responses should ") for line in examples)
    assert "empty array: []" in text  # no rule is a valid answer
    assert text.endswith("[Analysis]\nB was kinder.")
    assert "{" not in text  # every placeholder filled


def test_detailed_extractor_has_no_winner_and_still_renders():
    template = prompt_set("detailed").extractor
    assert "{winner}" not in template
    [message] = extract_request(template, "B was kinder.", "B")
    assert "B was kinder." in message["content"]


def test_paper_merger_holds_the_whole_list():
    rules = ["The reply is short.", "The reply is brief."]
    text = fill(prompt_set("paper").merger, rules=render_rules(rules))
    assert text.endswith("[Rules]\n- The reply is short.\n- The reply is brief.")


def test_optional_placeholders_fill_only_where_present():
    assert fill("{a} and {b}", a="1", optional={"b": "2", "c": "3"}) == "1 and 2"
    assert fill("{a}", a="{b}", optional={"b": "2"}) == "{b}"  # substituted text stays as is
    with pytest.raises(ValueError, match="missing"):
        fill("{b}", a="1", optional={"b": "2"})  # required ones are still required


def test_pack_rules_fills_each_part_up_to_the_room():
    rule = "x" * (5 * CHARS_PER_TOKEN - 3)  # "- " + rule + newline: exactly 5 tokens
    assert approx_tokens(f"- {rule}\n") == 5
    assert pack_rules([rule] * 4, room=20) == [[rule] * 4]  # exactly fits: one part
    assert pack_rules([rule] * 4, room=19) == [[rule] * 3, [rule]]
    assert pack_rules([rule] * 5, room=100, max_rules=2) == [[rule] * 2, [rule] * 2, [rule]]
    assert pack_rules(["y" * 1000, rule], room=10) == [["y" * 1000], [rule]]  # too long alone
    assert pack_rules([], room=10) == []
    with pytest.raises(ValueError, match="at least one rule"):
        pack_rules([rule], room=10, max_rules=0)


def test_prompt_templates_are_hashed_into_the_extract_artifact(make_cfg):
    from autorule.core.artifacts import config_hash

    detailed = config_hash(make_cfg("stage=extract"), "extract")
    paper = config_hash(make_cfg("stage=extract", "prompts@extract.prompts=paper"), "extract")
    edited = make_cfg("stage=extract", "prompts@extract.prompts=paper")
    edited.extract.prompts.merger += "\nBe brief."
    assert len({detailed, paper, config_hash(edited, "extract")}) == 3
    assert make_cfg("profile=paper").extract.prompts == prompt_set("paper")
