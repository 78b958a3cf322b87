"""Secrets never reach what autorule writes."""

import logging

from autorule.core.secrets import (
    MASK,
    RedactingFilter,
    add_known_secret,
    credential_overrides,
    is_secret_env_name,
    is_secret_key,
    redact,
    redact_override,
    redact_text,
)

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
    assert redact_text("use sk-abcdefgh1jklmnopqrstu now", {}) == f"use {MASK} now"
    assert redact_text("hf_abcdefghijklmnopqrstuvwxyz", {}) == MASK
    assert redact_text("nothing here", {}) == "nothing here"


def test_log_filter_masks_secret_in_args(monkeypatch):
    monkeypatch.setenv("MY_API_KEY", "supersecretvalue42")
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "key=%s", ("supersecretvalue42",), None
    )
    assert RedactingFilter().filter(record)
    assert record.getMessage() == f"key={MASK}"


def test_credential_shapes_must_start_a_word():
    """Ordinary words that merely contain ``sk-`` or ``hf_`` are not masked."""
    for text in (
        "/scratch/disk-scratch-autorule-runs",
        "org/risk-assessment-llama-8b-instruct",
        "task-abcdefgh1jklmnopqrstu",
        "leaf_abcdefghijklmnopqrstuvwxyz",
        "/scratch/sk-2024-experiments-long",  # a path component, not a key
        "org/sk-llama-3-8b-instruct-v2",
        "sk-learn-and-pytorch-tutorials",  # no digit: not a random key
    ):
        assert redact_text(text, {}) == text
    for text, masked in (
        ("key=sk-abcdefgh1jklmnopqrstu", f"key={MASK}"),
        ("Bearer sk-proj-Ab3dEfGhIjKlMnOpQrStUv", f"Bearer {MASK}"),
        ('{"k":"sk-abcdefgh1jklmnopqrstu"}', f'{{"k":"{MASK}"}}'),
        ("'line\\nsk-abcdefgh1jklmnopqrstu'", f"'line\\n{MASK}'"),  # inside a repr
    ):
        assert redact_text(text, {}) == masked


def test_overrides_are_masked_by_key_whatever_the_value():
    assert redact_override("+llm.api_key=plainSECRETvalue999") == f"+llm.api_key={MASK}"
    assert redact_override("++extra.password=hunter2", {}) == f"++extra.password={MASK}"
    assert redact_override("llm.api_key_env=MY_KEY", {}) == "llm.api_key_env=MY_KEY"
    assert redact_override("llm.api_key=null", {}) == "llm.api_key=null"
    assert redact_override("llm.model=x", ENV) == "llm.model=x"
    assert redact_override("llm.model=not-shaped-like-a-key-123", ENV) == f"llm.model={MASK}"


def test_dict_and_list_overrides_are_masked_when_they_hold_a_credential_key():
    assert redact_override("+foo={api_key: hunter2secret}", {}) == f"+foo={MASK}"
    assert redact_override("x=[1,{password: a}]", {}) == f"x={MASK}"
    assert redact_override("x={a: 1},{token: z}", {}) == f"x={MASK}"  # a sweep
    for ok in ("stage=a,b", "+x={a: 1, b: [2]}", "extract.prompts.reasoner='Use {winner} [x]'"):
        assert redact_override(ok, {}) == ok


def test_credential_overrides_lists_only_the_offending_ones():
    found = credential_overrides(
        ["stage=extract", "+llm.api_key=plain", "llm.model=not-shaped-like-a-key-123"], ENV
    )
    assert found == [f"+llm.api_key={MASK}", f"llm.model={MASK}"]
    assert credential_overrides(["stage=rm", "llm.api_key_env=K", "paths.root=/disk-x"], ENV) == []


def test_credential_variables_of_the_environment_are_known_by_name():
    for name in (
        "AWS_BEARER_TOKEN_BEDROCK",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "OPENAI_API_KEY",
        "WANDB_API_KEY",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "GITHUB_TOKEN",
        "DB_PASSWORD",
    ):
        assert is_secret_env_name(name), name
    for name in ("AWS_WEB_IDENTITY_TOKEN_FILE", "TOKENIZERS_PARALLELISM", "HOME", "AWS_REGION"):
        assert not is_secret_env_name(name), name
    env = {
        "AWS_BEARER_TOKEN_BEDROCK": "ABSKQmVkcm9ja0FQSUtleS1hYmM",
        "TOKENIZERS_PARALLELISM": "falsefalse",
    }
    assert (
        redact_text("Bearer ABSKQmVkcm9ja0FQSUtleS1hYmM; falsefalse", env)
        == f"Bearer {MASK}; falsefalse"
    )


def test_credential_query_parameters_of_urls_are_masked():
    for url, masked in (
        ("http://h/v1?token=5f2b8c0d9e", f"http://h/v1?token={MASK}"),
        ("https://h/x?a=1&api_key=abc123&b=2", f"https://h/x?a=1&api_key={MASK}&b=2"),
        ("https://acct.blob/c?sv=2022&sig=Zm9v%2Bbar", f"https://acct.blob/c?sv=2022&sig={MASK}"),
        (
            "https://b.s3/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=deadbeef",
            f"https://b.s3/k?X-Amz-Credential={MASK}&X-Amz-Signature={MASK}",
        ),
        (
            "llm.base_url='http://h/v1?access_token=xyz'",
            f"llm.base_url='http://h/v1?access_token={MASK}'",
        ),
    ):
        assert redact_text(url, {}) == masked
    for url in ("http://h/v1?max_tokens=5&model=m", "http://h/search?monkey=1", "a=b&c=d"):
        assert redact_text(url, {}) == url


def test_a_registered_secret_is_masked_whatever_its_variable_is_called():
    add_known_secret("gateway-credential-0a1b2c3d")
    assert redact({"error": "401: Bearer gateway-credential-0a1b2c3d"}, {}) == {
        "error": f"401: Bearer {MASK}"
    }
    add_known_secret("short")  # too short to mask ordinary text with
    assert redact_text("a short text", {}) == "a short text"
