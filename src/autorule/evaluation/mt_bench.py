"""MT-Bench hand-off: a FastChat model adapter and conversation template for models trained on the
plain ``<|user|>{prompt}<|assistant|>`` template, and answers in FastChat's format.

FastChat renders a conversation with the template its adapter picks for a model. The policies
here were trained on the bare template, with no system prompt and nothing between turns, which is
FastChat's ``NO_COLON_SINGLE`` style with an empty separator and the two markers as roles:
``<|user|>q1<|assistant|>a1<|user|>q2<|assistant|>``; an answer ends at eos or where the model
starts the next user turn (the template's ``stop_str``). :mod:`autorule.evaluation.generation`
renders later turns the same way, so answers written by the generate stage and answers FastChat
generates through :func:`register` agree.

Commands (``pip install 'autorule[fschat]'``; FastChat's judge scripts run from a FastChat checkout,
see docs/evaluation.md)::

    # FastChat generates, with the adapter registered (a model id containing "autorule" picks it):
    python -m autorule.evaluation.mt_bench --model-path <artifact>/model --model-id autorule-grpo
    # or the evaluate stage writes answers the generate stage sampled from question.jsonl:
    #   <evaluate artifact>/mt_bench/model_answer/<model id>.jsonl
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autorule.core.files import write_jsonl

TEMPLATE_NAME = "autorule-plain"
PLAIN_TEMPLATE = "<|user|>{prompt}<|assistant|>"
MARKER = "autorule"  # a model path or id containing it (any case) uses the adapter


def roles(template: str = PLAIN_TEMPLATE) -> tuple[str, str]:
    """(user marker, assistant marker): the template's text before and after ``{prompt}``."""
    if "{prompt}" not in template:
        raise ValueError(f"the prompt template {template!r} has no {{prompt}} placeholder")
    head, tail = template.split("{prompt}", 1)
    return head, tail


def conversation_template(template: str = PLAIN_TEMPLATE):
    """FastChat's ``Conversation`` for the plain template (no system prompt, no separators)."""
    from fastchat.conversation import Conversation, SeparatorStyle

    user, assistant = roles(template)
    return Conversation(
        name=TEMPLATE_NAME,
        system_template="{system_message}",
        system_message="",
        roles=(user, assistant),
        sep_style=SeparatorStyle.NO_COLON_SINGLE,
        sep="",
        stop_str=user or None,
    )


def is_autorule_model(model_path: str) -> bool:
    """A path or id naming autorule, or the ``model/`` folder of an autorule sft/grpo artifact."""
    if MARKER in str(model_path).lower():
        return True
    manifest = Path(model_path).expanduser().parent / "manifest.json"
    try:
        return json.loads(manifest.read_text()).get("stage") in ("sft", "grpo")
    except (OSError, ValueError, AttributeError):
        return False


def register(template: str = PLAIN_TEMPLATE) -> None:
    """Registers the conversation template and the adapter with FastChat (idempotent).

    FastChat tries adapters in order and its catch-all ``BaseModelAdapter`` matches every full
    path, so the adapter goes first in the list.
    """
    from fastchat.conversation import get_conv_template, register_conv_template
    from fastchat.model import model_adapter
    from fastchat.model.model_adapter import BaseModelAdapter

    register_conv_template(conversation_template(template), override=True)

    class AutoRuleAdapter(BaseModelAdapter):
        """Models trained by autorule on the plain template."""

        def match(self, model_path: str) -> bool:
            return is_autorule_model(model_path)

        def get_default_conv_template(self, model_path: str):
            return get_conv_template(TEMPLATE_NAME)

    model_adapter.model_adapters[:] = [
        a for a in model_adapter.model_adapters if type(a).__name__ != "AutoRuleAdapter"
    ]
    model_adapter.model_adapters.insert(0, AutoRuleAdapter())
    model_adapter.get_model_adapter.cache_clear()


def answer_rows(rows: Sequence[dict[str, Any]], model_id: str, tstamp: float) -> list[dict]:
    """FastChat ``model_answer/<model_id>.jsonl`` records from generate rows (MT-Bench questions:
    rows with a ``question_id`` and one response per turn)."""
    out = []
    for row in rows:
        qid = row.get("question_id", row["id"])
        try:
            qid = int(qid)
        except (TypeError, ValueError):
            pass
        answer_id = hashlib.sha256(f"{model_id}:{qid}".encode()).hexdigest()[:22]
        out.append(
            {
                "question_id": qid,
                "answer_id": answer_id,
                "model_id": model_id,
                "choices": [{"index": 0, "turns": list(row["responses"])}],
                "tstamp": tstamp,
            }
        )
    return out


def write_answers(
    folder: Path, rows: Sequence[dict[str, Any]], model_id: str, tstamp: float
) -> Path:
    """Writes ``<folder>/model_answer/<model_id>.jsonl`` (FastChat's layout under data/mt_bench)."""
    path = folder / "model_answer" / f"{model_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, answer_rows(rows, model_id, tstamp))
    return path


def main(argv: Sequence[str]) -> None:
    """Runs FastChat's ``gen_model_answer`` with the adapter registered; arguments as FastChat's."""
    import runpy

    register()
    sys.argv = ["gen_model_answer", *argv]
    runpy.run_module("fastchat.llm_judge.gen_model_answer", run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
