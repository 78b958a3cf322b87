"""Keeps secrets out of everything autorule writes: manifests, saved configs and logs.

Two nets, because either alone misses cases:

* by key: any mapping key that names a credential (``api_key``, ``aws_secret_access_key``,
  ``token``, ``password`` ...) has its value replaced, whatever the value is;
* by value: any string that contains a known secret value (taken from environment variables whose
  names look like credentials, e.g. ``AWS_SECRET_ACCESS_KEY`` or ``OPENAI_API_KEY``) or that looks
  like an access key (``AKIA...``, ``sk-...``, ``hf_...``) has that part masked.

Config keys that *name* an environment variable (``api_key_env: OPENAI_API_KEY``) are allowed and
kept: they hold no secret.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

# Keys whose values are credentials. Keys ending in "_env" name a variable and are kept.
# "token" alone is too broad (max_tokens, pad_token), so only credential-style token names match.
_SECRET_KEY = re.compile(
    r"(secret|password|passwd|api[_-]?key|access[_-]?key|session[_-]?key|credential"
    r"|private[_-]?key|authorization|auth[_-]?header"
    r"|(^|[_-])(auth|access|api|hf|bearer|session|refresh|github|wandb|security)[_-]?token$"
    r"|^token$)",
    re.IGNORECASE,
)
_ENV_NAME = re.compile(r"_env$|_env_var$|^env_", re.IGNORECASE)
# Shapes of common credentials, masked wherever they appear. Each must start the text or follow
# white space, an escaped newline or tab (as in a repr), or a delimiter of assignments and
# quoting (= : " ' ( [ { , ;), so names like "disk-scratch-...", "org/sk-llama-3-8b-..." or
# "scikit_sk-learn-..." are left alone.
_SECRET_VALUE = re.compile(
    r"(?:^|(?<=[\s=:\"'(\[{,;])|(?<=\\[ntr]))"
    r"((AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    r"|sk-(?=[A-Za-z0-9_\-]*[0-9])[A-Za-z0-9_\-]{16,}"  # OpenAI-style keys (random: a digit)
    r"|hf_[A-Za-z0-9]{20,}"  # Hugging Face tokens
    r"|xox[abpr]-[A-Za-z0-9\-]{10,})"  # Slack tokens
)


def is_secret_key(key: str) -> bool:
    """True when a mapping key names a credential (and not merely the variable holding one)."""
    return bool(_SECRET_KEY.search(key)) and not _ENV_NAME.search(key)


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look like credentials (long enough to matter)."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if is_secret_key(k) and len(v) >= 8}
    # Longest first so a secret that contains another is masked whole.
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Masks known secret values and credential-shaped substrings in ``text``."""
    for value in secret_env_values(environ):
        text = text.replace(value, MASK)
    return _SECRET_VALUE.sub(MASK, text)


def override_key(override: str) -> str | None:
    """The last component of a Hydra override's key (``+llm.api_key=x`` -> ``api_key``)."""
    key, sep, _ = override.partition("=")
    if not sep:
        return None
    return key.lstrip("+~").rsplit(".", 1)[-1].split("@", 1)[0]


def _holds_secret_key(value: Any) -> bool:
    """Whether a parsed override value (dicts, lists, sweeps of them) has a credential key."""
    if isinstance(value, Mapping):
        return any(
            (is_secret_key(str(k)) and v not in (None, "")) or _holds_secret_key(v)
            for k, v in value.items()
        )
    if isinstance(value, (list, tuple)):
        return any(_holds_secret_key(v) for v in value)
    options = getattr(value, "list", None)  # a sweep: a=x,y or choice(...)
    return isinstance(options, list) and _holds_secret_key(options)


def _structured_value(override: str) -> Any:
    """The value of an override as Hydra parses it (dicts and lists included), or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides([override])[0].value()
    except Exception:  # not a valid override: Hydra itself will reject it
        return None


def redact_override(override: str, environ: Mapping[str, str] | None = None) -> str:
    """Masks a ``key=value`` override whose key names a credential, or whose dict value holds one
    (``+x={api_key: ...}``), and secrets inside any value."""
    key = override_key(override)
    if key is not None:
        name, _, value = override.partition("=")
        if is_secret_key(key):
            return f"{name}={MASK}" if value not in ("", "null") else override
        if ("{" in value or "[" in value) and _holds_secret_key(_structured_value(override)):
            return f"{name}={MASK}"
    return redact_text(override, environ)


def credential_overrides(
    overrides: list[str], environ: Mapping[str, str] | None = None
) -> list[str]:
    """The overrides that carry a credential, as they would be shown once redacted.

    The command line refuses these: Hydra itself echoes overrides (sweep files, error messages)
    before autorule could mask them, so a secret must come from the environment instead.
    """
    return [redact_override(o, environ) for o in overrides if redact_override(o, environ) != o]


def redact(obj: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Returns a copy of a JSON-like object with secret keys and secret-looking values masked."""
    if isinstance(obj, Mapping):
        return {
            k: (MASK if is_secret_key(str(k)) and obj[k] not in (None, "") else redact(v, environ))
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [redact(v, environ) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, environ)
    return obj


class RedactingFilter(logging.Filter):
    """Logging filter that masks secrets in every record before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_redaction() -> None:
    """Adds :class:`RedactingFilter` to every handler of the root logger (idempotent)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
