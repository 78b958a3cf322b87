"""A reward model reads its score at eos: its pad token never doubles as eos."""

import logging

import pytest
import torch

from autorule.data.models import ADDED_PAD_TOKEN, ensure_score_pad_token, resolve

RESERVED = ["<|reserved_special_token_0|>", "<|reserved_special_token_1|>"]


@pytest.fixture
def reward_folder(make_cfg):
    return resolve(make_cfg(), "reward")


def padless_tokenizer(folder, reserved=()):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if reserved:
        tokenizer.add_special_tokens({"additional_special_tokens": list(reserved)})
    tokenizer.pad_token = None  # as Llama-3's tokenizer comes
    return tokenizer


def test_an_unused_reserved_token_is_picked_when_the_vocabulary_has_one(reward_folder, caplog):
    tokenizer = padless_tokenizer(reward_folder, RESERVED)
    size = len(tokenizer)
    with caplog.at_level(logging.WARNING):
        assert ensure_score_pad_token(tokenizer, where="rm") == RESERVED[0]
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and len(tokenizer) == size
    assert "[rm]" in caplog.text and RESERVED[0] in caplog.text  # said, not silent
    tokenizer.pad_token = tokenizer.eos_token  # padding with eos is no better than none
    assert ensure_score_pad_token(tokenizer) == RESERVED[0]
    assert ensure_score_pad_token(tokenizer) is None  # already distinct: left alone


def test_without_one_a_token_is_added_and_the_score_is_read_at_eos(reward_folder):
    from transformers import AutoModelForSequenceClassification

    tokenizer = padless_tokenizer(reward_folder)
    model = AutoModelForSequenceClassification.from_pretrained(reward_folder, num_labels=1).eval()
    assert ensure_score_pad_token(tokenizer, model) == ADDED_PAD_TOKEN
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id

    ids = tokenizer("a short answer", add_special_tokens=False)["input_ids"]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def score(rows):
        width = max(map(len, rows))
        batch = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
        with torch.no_grad():
            return model(input_ids=batch, attention_mask=(batch != pad).long()).logits[:, 0]

    # Padded beside a longer row, the answer scores as it does alone: at its eos.
    alone, padded = score([ids + [eos]]), score([ids + [eos], ids + [eos] + ids])
    assert torch.allclose(alone[0], padded[0], atol=1e-5)
    assert not torch.allclose(alone[0], score([ids])[0], atol=1e-5)  # not before eos
