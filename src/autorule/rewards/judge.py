"""The rule judge: does a response comply with a rule? One verdict per (response, rule).

Built from the ``judge`` config section (conf/judge.yaml), with an LLM role of its own,
``judge.llm`` (any backend of conf/llm/). Two modes:

* ``generate`` (the AutoRule paper's): the judge writes a short reason and ends with ``[[Yes]]``
  or ``[[No]]``, greedily. The verdict is parsed strictly (:func:`parse_verdict`): an answer that
  does not end with exactly one of the two markers is *unparsed* and counts as not satisfied.
* ``logprob``: nothing is generated. The prompt asks for a one-word answer, and the judge's
  probability of "Yes" against "No" as the first token of its reply is read
  (:meth:`autorule.llm.LLM.verdict_all`): p = p(Yes) / (p(Yes) + p(No)). A rule is satisfied when
  p >= ``judge.threshold``; with ``judge.soft`` the caller uses p itself. A served judge lists its
  top alternatives only: a choice missing from them counts as probability 0, and a verdict with
  neither choice listed is unparsed (p = 0).

Every prompt is one user message: the instructions and the conversation first
(``judge.prompts.conversation``), then a blank line and the rule with the question
(``judge.prompts.generate`` or ``.logprob``). All rules of one response therefore share a prefix,
which vLLM's prefix cache and the hf backend's shared KV cache compute once per response. Requests
go out response by response, so those that share a prefix are neighbours.

A conversation longer than ``judge.max_input_tokens`` is cut inside the response (its head kept,
the cut marked), and inside the request too if that alone is too long, never by dropping the rule
or the question (:func:`fit_conversation`): the released code cut the whole prompt from the right,
which can remove the very question the judge must answer.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig, OmegaConf

from autorule import llm as llms
from autorule.llm import LLM, LLMCallError, Messages
from autorule.rules.prompts import fill, render_conversation

log = logging.getLogger(__name__)

MODES = ("generate", "logprob")
# Room kept below judge.max_input_tokens for tokens that merge or split where the pieces of a
# prompt are joined (each piece is counted on its own).
TOKEN_SLACK = 8


@dataclass
class JudgeResult:
    """Verdicts of ``n`` responses on ``m`` rules."""

    probs: np.ndarray  # (n, m) float: p(Yes) in logprob mode; 1.0 / 0.0 in generate mode
    decisions: np.ndarray  # (n, m) bool: satisfied (p >= judge.threshold)
    unparsed: int  # verdicts that could not be read (counted as not satisfied)
    failed: int  # calls that failed after their retries (counted as not satisfied)
    answers: list[list[str]] | None = None  # generate mode: the judge's answers, (n, m)

    @property
    def size(self) -> int:
        return int(self.probs.size)

    def satisfied(self, soft: bool = False) -> np.ndarray:
        """(n, m) floats: p itself when ``soft``, else the decisions as 1.0 / 0.0."""
        return self.probs.astype(float) if soft else self.decisions.astype(float)


def parse_verdict(answer: str, choices: Sequence[str] = ("Yes", "No")) -> bool | None:
    """True / False for an answer ending in ``[[Yes]]`` / ``[[No]]``; None otherwise.

    Strict: exactly one marker in the whole answer, followed by nothing but white space and
    closing punctuation or emphasis (``.``, ``*``, ``)``). An answer that names both, or whose
    marker is followed by more text, is unparsed.
    """
    yes, no = (f"[[{c}]]" for c in choices[:2])
    found = re.findall(re.escape(yes) + "|" + re.escape(no), answer)
    if len(found) != 1:
        return None
    tail = answer[answer.rindex(found[0]) + len(found[0]) :]
    if tail.strip(" \t\r\n.*)_`"):
        return None
    return found[0] == yes


def yes_probability(logprobs: dict[str, float | None], choices: Sequence[str]) -> float | None:
    """p(yes) / (p(yes) + p(no)) from the two choices' log-probabilities (None = not listed,
    probability 0); None when neither was listed."""
    yes, no = (logprobs.get(c) for c in choices[:2])
    if yes is None and no is None:
        return None
    if yes is None:
        return 0.0
    if no is None:
        return 1.0
    gap = yes - no  # the two-way softmax is the logistic of the gap, computed without overflow
    if gap >= 0:
        return 1.0 / (1.0 + math.exp(-gap))
    return math.exp(gap) / (1.0 + math.exp(gap))


def strip_template(prompt: str, template: str | None) -> str:
    """The bare request inside a prompt formatted with ``template`` (``...{prompt}...``); the
    prompt unchanged when it is not in that format."""
    if not template or "{prompt}" not in template:
        return prompt
    head, tail = template.split("{prompt}", 1)
    if prompt.startswith(head) and prompt.endswith(tail) and len(prompt) >= len(head) + len(tail):
        return prompt[len(head) : len(prompt) - len(tail)]
    return prompt


def _as_text(item) -> str:
    """A prompt or completion as text: TRL passes strings, or message lists for chat datasets."""
    if isinstance(item, str):
        return item
    if isinstance(item, (list, tuple)):
        return render_conversation(item)
    raise TypeError(f"expected a string or a list of messages, got {type(item).__name__}")


def fit_conversation(
    prompt: str | None,
    response: str,
    room: int,
    count: Callable[[str], int],
    head: Callable[[str, int], str],
    marker: str,
) -> tuple[str | None, str, bool]:
    """``(prompt, response, cut)`` shortened so the rendered conversation takes at most ``room``
    tokens.

    The response is what is judged, so it keeps at least half the room: the request is cut
    (its head kept) only when it alone takes more than the other half. Each cut piece keeps its
    head and ends with ``marker``. ``count(text)`` counts tokens; ``head(text, n)`` is the text of
    the first ``n`` tokens.
    """

    if count(conversation_text(prompt, response)) <= room:
        return prompt, response, False
    frame = count(conversation_text("" if prompt is not None else None, ""))  # role labels
    marked = count("\n" + marker) + 1
    budget = max(0, room - frame)
    n_prompt = count(prompt) if prompt is not None else 0
    if n_prompt > budget // 2:  # the request too must give way
        prompt_room = budget // 2
        prompt = _cut(prompt, prompt_room - marked, head, marker)
        n_prompt = count(prompt)
    response = _cut(response, budget - n_prompt - marked, head, marker)
    return prompt, response, True


def _cut(text: str, keep: int, head: Callable[[str, int], str], marker: str) -> str:
    return f"{head(text, max(0, keep)).rstrip()}\n{marker}"


def conversation_text(prompt: str | None, response: str) -> str:
    """The conversation as the judge reads it: labelled turns, or the text alone when there is
    no separate prompt (a whole conversation passed as the response)."""
    if prompt is None:
        return response
    return render_conversation(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    )


class RuleJudge:
    """Checks responses against rules with the LLM of role ``judge.llm``.

    ``llm``: a backend to use instead of building the role's (tests, notebooks). ``device``: for
    a local judge configured with ``device: auto``, the device it runs on (a training process's).
    """

    def __init__(self, cfg: DictConfig, llm: LLM | None = None, device: str | None = None):
        section = cfg.judge
        self.mode = str(section.mode)
        if self.mode not in MODES:
            raise ValueError(f"judge.mode must be one of {MODES}, got {self.mode!r}")
        self.threshold = float(section.threshold)
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"judge.threshold must be in (0, 1], got {self.threshold}")
        self.soft = bool(section.soft)
        self.choices = tuple(str(c) for c in section.choices)
        if len(self.choices) != 2 or self.choices[0] == self.choices[1]:
            raise ValueError(f"judge.choices must be two different words, got {self.choices}")
        self.top_logprobs = int(section.top_logprobs)
        if self.mode == "logprob" and self.top_logprobs < 5:
            raise ValueError("judge.top_logprobs must be at least 5 so both verdicts show up")
        self.prompts = OmegaConf.to_container(section.prompts, resolve=True)
        self.prompt_template = section.get("prompt_template")
        for name in ("conversation", self.mode):
            fill(self.prompts[name], f"judge.prompts.{name}", **_placeholders(name))
        self.max_input_tokens = section.get("max_input_tokens")
        self._tokenizer_name = section.get("tokenizer") or None
        self._tokenizer = None
        if llm is None:
            overrides = {}
            if device and OmegaConf.select(cfg, "judge.llm.device") == "auto":
                overrides["device"] = device
            llm = llms.build(cfg, "judge.llm", overrides)
        self.llm = llm
        if self.mode == "logprob" and not llm.supports_verdicts:
            raise ValueError(
                f"judge.mode=logprob reads log-probabilities, which the {llm.backend} backend "
                "does not return: pick llm@judge.llm=hf|vllm|openai, or judge.mode=generate"
            )
        if self.max_input_tokens and not self._tokenizer_name:
            self._tokenizer_name = llm.model

    # ----------------------------------------------------------------------------------------
    # Prompts

    @property
    def tokenizer(self):
        """Counts prompt tokens for ``judge.max_input_tokens`` (loaded on first use)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_name)
            except OSError as err:
                raise OSError(
                    f"judge.max_input_tokens needs a tokenizer to count tokens; could not load "
                    f"{self._tokenizer_name!r} (set judge.tokenizer to a local folder or hub id)"
                ) from err
        return self._tokenizer

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _head(self, text: str, n: int) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:n]
        return self.tokenizer.decode(ids)

    def _chat_tokens(self, content: str) -> int:
        """Tokens of one user message as the model reads it (chat template included)."""
        tokenizer = self.tokenizer
        if tokenizer.chat_template:
            return len(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": content}],
                    tokenize=True,
                    add_generation_prompt=True,
                    return_dict=True,
                )["input_ids"]
            )
        return self._count(content)

    def rule_parts(self, rules: Sequence[str]) -> list[str]:
        """The part of the prompt after the conversation, one per rule."""
        return [fill(self.prompts[self.mode], f"judge.prompts.{self.mode}", rule=r) for r in rules]

    def conversation_part(self, prompt: str | None, response: str, room: int | None) -> str:
        if room is not None:
            prompt, response, _ = fit_conversation(
                prompt, response, room, self._count, self._head, self.prompts["cut_marker"]
            )
        return fill(
            self.prompts["conversation"],
            "judge.prompts.conversation",
            conversation=conversation_text(prompt, response),
        )

    def conversation_room(self, rule_parts: Sequence[str]) -> int | None:
        """Tokens left for the conversation under ``judge.max_input_tokens`` (None: no limit)."""
        if not self.max_input_tokens:
            return None
        # Everything but the conversation, with the longest rule: one room fits every rule.
        frame = self._chat_tokens(self.join(self.conversation_part(None, "", None), ""))
        longest = max((self._count(part) for part in rule_parts), default=0)
        room = int(self.max_input_tokens) - frame - longest - TOKEN_SLACK
        if room < 16:
            raise ValueError(
                f"judge.max_input_tokens={self.max_input_tokens} leaves {room} tokens for the "
                "conversation once the instructions and the longest rule are in: raise it"
            )
        return room

    @staticmethod
    def join(conversation_part: str, rule_part: str) -> str:
        return f"{conversation_part}\n\n{rule_part}"

    def requests(
        self, responses: Sequence, rules: Sequence[str], prompts: Sequence | None = None
    ) -> list[Messages]:
        """One chat request per (response, rule), response by response."""
        if prompts is not None and len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        parts = self.rule_parts(rules)
        room = self.conversation_room(parts)
        requests = []
        for i, response in enumerate(responses):
            prompt = None
            if prompts is not None:
                prompt = strip_template(_as_text(prompts[i]), self.prompt_template)
            shared = self.conversation_part(prompt, _as_text(response), room)
            requests.extend([{"role": "user", "content": self.join(shared, p)}] for p in parts)
        return requests

    # ----------------------------------------------------------------------------------------
    # Verdicts

    def judge(
        self, responses: Sequence, rules: Sequence[str], prompts: Sequence | None = None
    ) -> JudgeResult:
        """Verdicts of every response on every rule.

        ``responses``: the texts judged (strings, or message lists). ``prompts``: the request
        each answered (formatted prompts are shown bare, see ``judge.prompt_template``); None
        when each response already holds the whole conversation. All requests go to the LLM
        layer at once, which runs them concurrently (served judges) or in batches (local ones).
        """
        n, m = len(responses), len(rules)
        probs = np.zeros((n, m), dtype=float)
        if n == 0 or m == 0:
            return JudgeResult(probs, probs >= 1.0, 0, 0, [[] for _ in range(n)])
        requests = self.requests(responses, rules, prompts)
        if self.mode == "generate":
            completions = self.llm.complete_all(requests, desc="judge")
        else:
            completions = self.llm.verdict_all(
                requests, self.choices, self.top_logprobs, desc="judge"
            )
        failed = [c for c in completions if not c.ok]
        if len(failed) == len(completions):
            raise LLMCallError(f"every judge call failed; the first: {failed[0].error}")
        unparsed = 0
        for k, completion in enumerate(completions):
            if not completion.ok:
                continue
            if self.mode == "generate":
                verdict = parse_verdict(completion.text, self.choices)
                p = None if verdict is None else float(verdict)
            else:
                p = yes_probability(completion.choice_logprobs or {}, self.choices)
            if p is None:
                unparsed += 1
            else:
                probs[k // m, k % m] = p
        if failed:
            log.warning("judge: %d of %d calls failed (not satisfied)", len(failed), n * m)
        answers = None
        if self.mode == "generate":
            answers = [[completions[i * m + j].text for j in range(m)] for i in range(n)]
        decisions = probs >= self.threshold if self.mode == "logprob" else probs >= 1.0
        return JudgeResult(probs, decisions, unparsed, len(failed), answers)

    def close(self) -> None:
        """Releases the judge's model (local backends keep it in memory until then)."""
        for attribute in ("_model", "_engine"):
            if getattr(self.llm, attribute, None) is not None:
                setattr(self.llm, attribute, None)


def _placeholders(name: str) -> dict[str, str]:
    """The placeholders each judge prompt must hold (checked when the judge is built)."""
    if name == "conversation":
        return {"conversation": ""}
    if name in MODES:
        return {"rule": ""}
    return {}
