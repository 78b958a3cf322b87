"""Keeps secrets out of everything autorule writes: manifests, saved configs, call logs,
examples, cached answers and logs all pass :func:`redact` (or :func:`redact_text`) on their way
to disk.

Three nets, because no one of them catches every case:

* by key: any mapping key that names a credential (``api_key``, ``aws_secret_access_key``,
  ``token``, ``password`` ...) has its value replaced, whatever the value is;
* by value: any string that contains a known secret value has that part masked. Known values are
  those of environment variables whose names look like credentials (``AWS_SECRET_ACCESS_KEY``,
  ``AWS_SESSION_TOKEN``, ``AWS_BEARER_TOKEN_BEDROCK``, ``OPENAI_API_KEY``, ``HF_TOKEN``,
  ``WANDB_API_KEY`` ...: :func:`is_secret_env_name`) plus the credentials a backend registered
  with :func:`add_known_secret` (the API key read from ``llm.api_key_env``, whatever that
  variable is called; the AWS credentials boto3 resolved, from files too). A server that echoes
  the request's ``Authorization`` header into an error message is the case this net is for;
* by shape: strings that look like an access key (``AKIA...``, ``sk-...``, ``hf_...``) and the
  values of credential-looking URL query parameters (``?token=``, ``&api_key=``, ``&sig=``,
  ``X-Amz-Signature=`` ...) are masked wherever they appear.

Config keys that *name* an environment variable (``api_key_env: OPENAI_API_KEY``) are allowed and
kept: they hold no secret.
"""

from __future__ import annotations

import logging
import os
import re
import threading
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


# URL query parameters whose values are credentials: token, access_token, api_key, apikey, key,
# sig and signature (Azure SAS, signed URLs), X-Amz-Signature / -Credential / -Security-Token
# (presigned AWS URLs), password, secret, auth, code. The value runs to the next & # or quote.
_URL_SECRET_PARAM = re.compile(
    r"(?<=[?&;])((?:[\w.-]*[_.-])?(?:token|api[_-]?key|apikey|key|sig|signature|credential"
    r"|password|passwd|secret|auth|code)=)[^&#\s\"'<>]+",
    re.IGNORECASE,
)
# Components of an environment variable's name that make its value a credential (names are split
# at underscores): AWS_BEARER_TOKEN_BEDROCK, GITHUB_TOKEN, DB_PASSWORD, MY_SECRET ... plus names
# ending in KEY or KEY_ID (OPENAI_API_KEY, AWS_ACCESS_KEY_ID).
_ENV_SECRET_PARTS = {"TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "CREDENTIALS", "APIKEY"}
# Variables that name a file, folder or setting rather than hold the credential itself.
_ENV_NOT_SECRET_SUFFIXES = ("_FILE", "_PATH", "_DIR", "_ENV", "_NAME", "_TYPE", "_EXPIRATION")
_MIN_SECRET_LEN = 8  # shorter values ("true", "1") would mask ordinary text everywhere

_known_lock = threading.Lock()
_KNOWN: set[str] = set()


def is_secret_key(key: str) -> bool:
    """True when a mapping key names a credential (and not merely the variable holding one)."""
    return bool(_SECRET_KEY.search(key)) and not _ENV_NAME.search(key)


def is_secret_env_name(name: str) -> bool:
    """True when an environment variable's name says its value is a credential.

    Broader than :func:`is_secret_key` (which must leave config keys such as ``max_tokens``
    alone): any ``TOKEN``, ``SECRET`` or ``PASSWORD`` component counts, wherever it sits
    (``AWS_BEARER_TOKEN_BEDROCK``), and so does a name ending in ``KEY`` or ``KEY_ID``; names of
    files and settings (``AWS_WEB_IDENTITY_TOKEN_FILE``) do not.
    """
    upper = name.upper()
    if upper.endswith(_ENV_NOT_SECRET_SUFFIXES):
        return False
    parts = set(upper.split("_"))
    return (
        is_secret_key(name)
        or bool(parts & _ENV_SECRET_PARTS)
        or upper.endswith(("_KEY", "_KEY_ID", "APIKEY"))
    )


def add_known_secret(value: str | None) -> None:
    """Masks ``value`` wherever it appears from now on (in this process).

    For credentials whose variable name says nothing (``llm.api_key_env=MY_GATEWAY``) or that
    come from files rather than the environment (``~/.aws/credentials``).
    """
    if value and len(value) >= _MIN_SECRET_LEN:
        with _known_lock:
            _KNOWN.add(value)


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Secret values to mask: environment variables whose names look like credentials (long
    enough to matter), plus those registered with :func:`add_known_secret`."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if is_secret_env_name(k) and len(v) >= _MIN_SECRET_LEN}
    with _known_lock:
        values |= _KNOWN
    # Longest first so a secret that contains another is masked whole.
    return sorted(values, key=len, reverse=True)


def _mask(text: str, values: list[str]) -> str:
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    text = _URL_SECRET_PARAM.sub(lambda m: m.group(1) + MASK, text)
    return _SECRET_VALUE.sub(MASK, text)


def redact_text(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Masks known secret values, credential query parameters of URLs and credential-shaped
    substrings in ``text``."""
    return _mask(text, secret_env_values(environ))


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
    """Returns a copy of a JSON-like object with secret keys and secret-looking values masked.

    The one pass everything autorule writes goes through (see the module docstring)."""
    return _redact(obj, secret_env_values(environ))


def _redact(obj: Any, values: list[str]) -> Any:
    if isinstance(obj, Mapping):
        return {
            k: (MASK if is_secret_key(str(k)) and obj[k] not in (None, "") else _redact(v, values))
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [_redact(v, values) for v in obj]
    if isinstance(obj, str):
        return _mask(obj, values)
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
