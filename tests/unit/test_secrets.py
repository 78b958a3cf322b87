"""Secrets never reach what autorule writes."""

import logging

from autorule.secrets import MASK, RedactingFilter, is_secret_key, redact, redact_text

ENV = {
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "HOME": "/home/u",
    "OPENAI_API_KEY": "not-shaped-like-a-key-123",
}


def test_secret_keys():
    for key in [
        "api_key",
        "aws_secret_access_key",
        "AWS_SESSION_TOKEN",
        "HF_TOKEN",
        "password",
        "token",
        "Authorization",
    ]:
        assert is_secret_key(key), key
    for key in ["api_key_env", "max_tokens", "pad_token", "tokenizer", "max_new_tokens", "model"]:
        assert not is_secret_key(key), key


def test_redact_nested_by_key_and_value():
    obj = {
        "llm": {"api_key": "abc", "api_key_env": "OPENAI_API_KEY", "max_tokens": 512},
        "overrides": [
            "llm.base_url=http://x",
            "+foo=AKIAABCDEFGHIJKLMNOP",
            "secret=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ],
        "note": "key is not-shaped-like-a-key-123 ok",
    }
    out = redact(obj, ENV)
    assert out["llm"] == {"api_key": MASK, "api_key_env": "OPENAI_API_KEY", "max_tokens": 512}
    assert out["overrides"] == ["llm.base_url=http://x", f"+foo={MASK}", f"secret={MASK}"]
    assert out["note"] == f"key is {MASK} ok"
    assert obj["llm"]["api_key"] == "abc"  # the input is not modified


def test_redact_text_shapes():
    assert redact_text("use sk-abcdefghijklmnopqrstu now", {}) == f"use {MASK} now"
    assert redact_text("hf_abcdefghijklmnopqrstuvwxyz", {}) == MASK
    assert redact_text("nothing here", {}) == "nothing here"


def test_log_filter_masks_secret_in_args(monkeypatch):
    monkeypatch.setenv("MY_API_KEY", "supersecretvalue42")
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "key=%s", ("supersecretvalue42",), None
    )
    assert RedactingFilter().filter(record)
    assert record.getMessage() == f"key={MASK}"
