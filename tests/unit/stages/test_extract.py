"""The extract stage's merge step with a scripted in-process LLM: one call while the list fits."""

import json
import logging

import pytest
from omegaconf import OmegaConf

from autorule import llm as llms
from autorule.core.config import CONF_DIR
from autorule.rules.prompts import approx_tokens, fill, rule_tokens
from autorule.stages.extract import merge_rules

MERGER = OmegaConf.load(CONF_DIR / "prompts" / "paper.yaml").merger
RULES = [
    f"The assistant's responses should follow instruction {i}." for i in range(250)
]  # more than the old fixed chunk of 200


class Merger(llms.base.LocalLLM):
    """Answers a merge prompt with every other rule of its list, and records the prompts."""

    backend = "scripted-merger"

    def __init__(self, max_tokens=1000):
        super().__init__(model="m", temperature=0.0, max_tokens=max_tokens, progress=False)
        self.prompts: list[str] = []

    def generate_batch(self, batch):
        answers = []
        for messages in batch:
            prompt = messages[-1]["content"]
            self.prompts.append(prompt)
            listed = [line[2:] for line in prompt.splitlines() if line.startswith("- ")]
            answers.append(llms.Completion(text=json.dumps(listed[::2])))
        return answers


def prompt_tokens(rules):
    return approx_tokens(fill(MERGER, rules="")) + sum(rule_tokens(rules))


def test_a_list_that_fits_is_merged_in_one_call(caplog):
    llm = Merger()
    context = prompt_tokens(RULES) + llm.max_tokens  # exactly room for the whole list
    with caplog.at_level(logging.WARNING):
        merged, info = merge_rules(llm, RULES, MERGER, context_tokens=context)
    assert len(llm.prompts) == info["calls_made"] == info["rounds"] == 1
    assert all(f"- {rule}\n" in llm.prompts[0] + "\n" for rule in RULES)  # the whole list
    assert merged == RULES[::2]
    assert info["split_rounds"] == 0 and info["prompt_tokens_estimate"] == context - 1000
    assert "do not fit" not in caplog.text


def test_a_list_too_long_for_the_context_is_split_logged_and_counted(caplog):
    llm = Merger()
    context = prompt_tokens(RULES) + llm.max_tokens - 1  # one token short
    with caplog.at_level(logging.WARNING):
        merged, info = merge_rules(llm, RULES, MERGER, context_tokens=context)
    # Round 1: two parts (the list does not fit); round 2: the halved list fits in one call.
    assert info["rounds"] == 2 and info["calls_made"] == len(llm.prompts) == 3
    assert info["split_rounds"] == 1
    assert "250 rules" in caplog.text and "do not fit" in caplog.text
    assert "merge_context_tokens" in caplog.text
    assert merged and len(merged) < len(RULES)


def test_chunk_size_still_caps_rules_per_prompt_without_a_warning(caplog):
    llm = Merger()
    with caplog.at_level(logging.WARNING):
        _, info = merge_rules(llm, RULES, MERGER, context_tokens=10**6, chunk_size=50)
    assert [p.count("\n- ") for p in llm.prompts[:3]] == [50, 50, 50]
    assert info["split_rounds"] == 0 and "do not fit" not in caplog.text


def test_a_context_too_small_for_the_prompt_is_an_error():
    context = prompt_tokens([]) + 1000  # the prompt's own text and the answer budget, no rules
    with pytest.raises(ValueError, match=f"merge_context_tokens={context} leaves no room"):
        merge_rules(Merger(max_tokens=1000), RULES, MERGER, context_tokens=context)
