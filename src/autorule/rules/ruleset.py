"""Rule sets: de-duplication and loading a rule set for later stages.

A rule set is a list of short strings. Later stages get theirs from :func:`load_rules`, which
reads either a rule file the user names (``rules.path``, JSON or YAML) or the ``extract`` stage's
``rules.json``, and records which in the stage's manifest. A rule file is a list of strings, or a
mapping whose ``rules`` key holds one (the other keys, e.g. a ``description``, are ignored)::

    {"description": "hand-written", "rules": ["The reply answers the question asked.", ...]}
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from autorule.core.files import read_utf8

log = logging.getLogger(__name__)

_SPACE = re.compile(r"\s+")


def normalize_rule(rule: str) -> str:
    """The form two rules must share to count as exact duplicates: case and spacing folded."""
    return _SPACE.sub(" ", rule).strip().rstrip(".").strip().casefold()


def dedupe_rules(rules: Iterable[str]) -> list[str]:
    """Drops exact duplicates (after :func:`normalize_rule`) and blanks; the first spelling wins."""
    seen: set[str] = set()
    unique = []
    for rule in rules:
        key = normalize_rule(rule)
        if key and key not in seen:
            seen.add(key)
            unique.append(_SPACE.sub(" ", rule).strip())
    return unique


def read_rules_file(path: str | Path) -> list[str]:
    """Reads a JSON or YAML rule file; raises ValueError naming the file when it is malformed,
    or when a rule is not text that can be encoded (a lone surrogate, which JSON's ``\ud800``
    escapes can spell: no tokenizer or API can send it)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"rule file {path} does not exist")
    text = read_utf8(path, "rule file")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            # PyYAML names the text "<unicode string>"; say which file, and where in it. Its
            # safe loader also refuses tags that build Python objects (!!python/...).
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(err, "problem", None) or str(err)
            raise ValueError(f"rule file {path} is not plain YAML{where}: {problem}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"rule file {path} is not valid JSON: {err}") from err
    if isinstance(data, dict):
        data = data.get("rules")
    if not isinstance(data, list) or not all(isinstance(r, str) for r in data):
        raise ValueError(
            f"rule file {path} must hold a list of strings, or a mapping whose "
            "'rules' key holds one"
        )
    for index, rule in enumerate(data):
        try:
            rule.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(
                f"rule file {path}: rule {index} holds {err.object[err.start : err.end]!r} at "
                f"character {err.start}, which is not encodable text ({err.reason})"
            ) from None
    rules = dedupe_rules(data)
    if not rules:
        raise ValueError(f"rule file {path} holds no rules")
    return rules


def rules_source(cfg, inputs: Mapping[str, Path]) -> str:
    """Where :func:`load_rules` reads the rule set: the rule file, or the extract artifact's."""
    from autorule.core.stage import RULES_STAGE

    rules_path = (cfg.get("rules") or {}).get("path")
    if rules_path:
        return f"rule file {rules_path} (rules.path)"
    return f"rule file {Path(inputs[RULES_STAGE]) / 'rules.json'} (the extract artifact)"


def load_rules(cfg, inputs: Mapping[str, Path]) -> list[str]:
    """The rule set of a rule-reading stage (its ``SPEC.uses_rules``).

    ``rules.path``, when set, names a rule file; otherwise ``inputs["extract"]``, the extract
    artifact the stage's job resolved as an input, is read (``job.input("extract")`` fails with
    the command that makes it). Either way the stage's manifest records where the rules came
    from and its artifact hash covers them. When the extract artifact holds the fallback rule
    file instead of extracted rules (``extract.fallback_rules``), a warning says so every time it
    is read: a model trained on hand-written example rules must not pass for one trained on
    extracted ones.
    """
    from autorule.core.artifacts import read_manifest
    from autorule.core.stage import RULES_STAGE

    rules_path = (cfg.get("rules") or {}).get("path")
    if rules_path:
        return read_rules_file(rules_path)
    if RULES_STAGE not in inputs:
        raise ValueError(
            f"no rule set: rules.path is not set and the {RULES_STAGE} artifact is not among "
            "the inputs (the stage's SPEC needs uses_rules)"
        )
    folder = Path(inputs[RULES_STAGE])
    manifest = read_manifest(folder) or {}
    rules = read_rules_file(folder / "rules.json")
    info = manifest.get("extract") or {}
    if info.get("rules_origin") == "fallback" or manifest.get("counts", {}).get(
        "fallback_rules_used"
    ):
        log.warning(
            "the extract artifact %s holds the FALLBACK rule file %s (%d hand-written example "
            "rules), NOT rules extracted from preferences: %s. Re-run extraction with a working "
            "LLM, or choose a rule set explicitly with rules.path=<file>.",
            folder,
            info.get("fallback_file", "?"),
            len(rules),
            info.get("reason", "extraction produced no rules"),
        )
    return rules
