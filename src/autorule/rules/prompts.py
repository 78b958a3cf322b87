"""Filling the extract stage's prompt templates (pure string work, no model calls).

Templates live in config (``extract.prompts``) so they can be edited without touching code. They
name their inputs as ``{placeholder}``; :func:`fill` substitutes exactly the names it is given and
leaves every other brace alone, so a template may show literal JSON such as ``["..."]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

ROLE_NAMES = {"user": "User", "assistant": "Assistant", "system": "System"}

# Characters per token assumed where a prompt must be sized without the model's tokenizer (an API
# model's is not at hand). English prose runs at about 4 characters a token with current LLM
# tokenizers; 3 errs towards splitting a merge that would have fit rather than sending one that
# overflows the context.
CHARS_PER_TOKEN = 3


def fill(
    template: str,
    where: str = "prompt",
    *,
    optional: Mapping[str, str] | None = None,
    **values: str,
) -> str:
    """``template`` with each ``{name}`` replaced by ``values[name]``.

    Raises ValueError when the template lacks one of the placeholders: a prompt that silently
    dropped the conversation would waste every call made with it. ``where`` names the config key
    in the message. ``optional`` placeholders are filled where the template has them (one prompt
    set names the winner to the extractor, another does not).
    """
    missing = [name for name in values if "{" + name + "}" not in template]
    if missing:
        wanted = ", ".join("{" + n + "}" for n in values)
        raise ValueError(f"{where} must contain the placeholders {wanted}; missing: {missing}")
    values = {
        **{name: v for name, v in (optional or {}).items() if "{" + name + "}" in template},
        **values,
    }
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


def approx_tokens(text: str) -> int:
    """An upper-side estimate of ``text``'s token count (:data:`CHARS_PER_TOKEN`)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def rule_tokens(rules: Sequence[str]) -> list[int]:
    """Estimated tokens of each rule's line in :func:`render_rules` (newline included)."""
    return [approx_tokens(f"- {rule}\n") for rule in rules]


def pack_rules(rules: Sequence[str], room: int, max_rules: int | None = None) -> list[list[str]]:
    """``rules`` cut into consecutive parts whose rendered lists fit in ``room`` tokens each.

    Greedy: a part grows until the next rule would overflow it (or it holds ``max_rules``). A rule
    longer than ``room`` on its own gets a part to itself: there is nothing smaller to send.
    """
    if max_rules is not None and max_rules < 1:
        raise ValueError(f"a part must hold at least one rule, got max_rules={max_rules}")
    parts: list[list[str]] = []
    part: list[str] = []
    used = 0
    for rule, cost in zip(rules, rule_tokens(rules), strict=True):
        full = max_rules is not None and len(part) >= max_rules
        if part and (used + cost > room or full):
            parts.append(part)
            part, used = [], 0
        part.append(rule)
        used += cost
    if part:
        parts.append(part)
    return parts
