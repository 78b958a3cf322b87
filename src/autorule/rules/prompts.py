"""Filling the extract stage's prompt templates (pure string work, no model calls).

Templates live in config (``extract.prompts``) so they can be edited without touching code. They
name their inputs as ``{placeholder}``; :func:`fill` substitutes exactly the names it is given and
leaves every other brace alone, so a template may show literal JSON such as ``["..."]``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ROLE_NAMES = {"user": "User", "assistant": "Assistant", "system": "System"}


def fill(template: str, where: str = "prompt", **values: str) -> str:
    """``template`` with each ``{name}`` replaced by ``values[name]``.

    Raises ValueError when the template lacks one of the placeholders: a prompt that silently
    dropped the conversation would waste every call made with it. ``where`` names the config key
    in the message.
    """
    missing = [name for name in values if "{" + name + "}" not in template]
    if missing:
        wanted = ", ".join("{" + n + "}" for n in values)
        raise ValueError(f"{where} must contain the placeholders {wanted}; missing: {missing}")
    if not values:
        return template
    # One regex pass over the template: substituted text (conversations, model output) is never
    # searched for placeholders again.
    pattern = re.compile("|".join(re.escape("{" + name + "}") for name in values))
    return pattern.sub(lambda m: values[m.group(0)[1:-1]], template)


def render_conversation(messages: Sequence[dict]) -> str:
    """A conversation as plain text, one labelled block per message."""
    blocks = []
    for message in messages:
        role = ROLE_NAMES.get(str(message.get("role")), str(message.get("role")).title())
        blocks.append(f"{role}:\n{str(message.get('content', '')).strip()}")
    return "\n\n".join(blocks)


def render_rules(rules: Sequence[str]) -> str:
    """A rule list as one ``- rule`` line each (how the merger prompt shows it)."""
    return "\n".join(f"- {rule}" for rule in rules)


def user(content: str) -> list[dict[str, str]]:
    """A single-message chat request."""
    return [{"role": "user", "content": content}]
