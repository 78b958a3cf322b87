"""Rule sets: de-duplication, chunking, and loading a rule set for later stages.

A rule set is a list of short strings. Later stages get theirs from :func:`load_rules`, which
reads either a rule file the user names (``rules.path``, JSON or YAML) or the ``extract`` stage's
``rules.json``. A rule file is a list of strings, or a mapping whose ``rules`` key holds one (the
other keys, e.g. a ``description``, are ignored)::

    {"description": "hand-written", "rules": ["The reply answers the question asked.", ...]}
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

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


def chunks(items: Sequence[str], size: int) -> list[list[str]]:
    """``items`` cut into consecutive chunks of at most ``size`` (size >= 1)."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def read_rules_file(path: str | Path) -> list[str]:
    """Reads a JSON or YAML rule file; raises ValueError naming the file when it is malformed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"rule file {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
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
    rules = dedupe_rules(data)
    if not rules:
        raise ValueError(f"rule file {path} holds no rules")
    return rules


def load_rules(source: DictConfig | str | Path) -> list[str]:
    """The rule set a later stage should use.

    ``source`` is a rule file path, or the run's config: then ``rules.path`` wins when set, and
    otherwise the complete ``extract`` artifact for this config is read (missing: the error says
    the command that makes it). When that artifact holds the fallback rule file instead of
    extracted rules (``extract.fallback_rules``), a warning says so every time it is read: a
    model trained on hand-written example rules must not pass for one trained on extracted ones.
    """
    if not isinstance(source, DictConfig):
        return read_rules_file(source)
    path = OmegaConf.select(source, "rules.path")
    if path:
        return read_rules_file(path)
    from autorule.core.artifacts import (
        StageInputError,
        artifact_path,
        check_files,
        is_complete,
        make_command,
        read_manifest,
        verify_hashes,
    )

    folder = artifact_path(source, "extract")
    manifest = read_manifest(folder)
    problem = "not complete" if not is_complete(manifest) else None
    problem = problem or check_files(folder, manifest, verify_hashes(source))
    if problem:
        raise StageInputError(
            f"no rule set: rules.path is not set and the extract artifact {folder} is "
            f"unusable ({problem}). Make it with:\n  {make_command(source, 'extract')}\n"
            "or give a rule file with rules.path=<file.json|yaml>"
        )
    rules = read_rules_file(folder / "rules.json")
    info = manifest.get("extract") or {}
    if info.get("rules_source") == "fallback" or manifest.get("counts", {}).get(
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
