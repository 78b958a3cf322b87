"""The rule judge: does a response comply with a rule? One verdict per (response, rule).

Built from the ``judge`` config section (conf/judge.yaml), with an LLM role of its own,
``judge.llm`` (any backend of conf/llm/), and a prompt set of conf/prompts/judge/
(``prompts/judge@judge.prompts=detailed|paper``). Two modes:

* ``generate`` (the AutoRule paper's): the judge answers greedily and its answer holds
  ``[[Yes]]`` or ``[[No]]``. ``judge.parse=strict`` wants exactly one marker at the end
  (:func:`parse_verdict`); ``contains`` takes ``[[Yes]]`` anywhere as satisfied, the released
  code's rule. An answer without a verdict is *unparsed* and counts as not satisfied.
* ``logprob``: nothing is generated. The reply is opened for the judge with the prompt set's
  ``opening`` (``[[`` for the paper prompt, whose verdict is ``[[Yes]]``/``[[No]]``; nothing for
  the detailed one), and its probability of "Yes" against "No" at the next token is read
  (:meth:`autorule.llm.LLM.verdict_all`): p = p(Yes) / (p(Yes) + p(No)). Which tokens count for
  a choice is one rule for served and local judges (:func:`autorule.llm.base.counts_for`),
  checked against the judge's tokenizer when the judge is built. A rule is satisfied when
  p >= ``judge.threshold``; with ``judge.soft`` the caller uses p itself.

A prompt is one user message, the template of the mode with ``{rule}`` and ``{conversation}``
filled in. The conversation is shown in labelled turns or as the policy saw it
(``judge.prompts.conversation_format``). Requests go out response by response, so those that
share a prefix are neighbours (vLLM's prefix cache and the hf backend compute it once).

A prompt over the token budget (``judge.max_input_tokens``; for a local judge without one, its
context window) is cut as ``judge.truncation`` says, counted with the judge's tokenizer and chat
template, and the cut is logged: ``inside_response`` cuts the response (its head kept, the cut
marked) and never the rule or the question (:func:`fit_conversation`); ``released`` cuts the
whole prompt from the right, as the released code did, which removes the question from a long
response's prompt: a hidden length penalty (docs/rewards.md measures it).
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
from autorule.llm.base import check_choices, check_verdict_tokens
from autorule.rules.prompts import fill, render_conversation

log = logging.getLogger(__name__)

MODES = ("generate", "logprob")
TRUNCATIONS = ("inside_response", "released")
PARSES = ("strict", "contains")
CONVERSATION_FORMATS = ("labelled", "policy")
# Room kept below judge.max_input_tokens for tokens that merge or split where the pieces of a
# prompt are joined (each piece is counted on its own).
TOKEN_SLACK = 8
# The fewest tokens a conversation may be given: a rule that leaves less is refused.
MIN_ROOM = 16


class JudgeOutageError(LLMCallError):
    """Judge calls of one step failed beyond ``judge.max_failed_share`` (after their retries)."""


class UnreadableJudgeError(RuntimeError):
    """Not one verdict of the first step could be read: the judge cannot work as configured."""


@dataclass
class JudgeResult:
    """Verdicts of ``n`` responses on ``m`` rules."""

    probs: np.ndarray  # (n, m) float: p(Yes) in logprob mode; 1.0 / 0.0 in generate mode
    decisions: np.ndarray  # (n, m) bool: satisfied (p >= judge.threshold)
    unparsed: int  # verdicts that could not be read (counted as not satisfied)
    failed: int  # calls that failed after their retries (counted as not satisfied)
    answers: list[list[str]] | None = None  # generate mode: the judge's answers, (n, m)
    cut: int = 0  # prompts cut to the token budget

    @property
    def size(self) -> int:
        return int(self.probs.size)

    def satisfied(self, soft: bool = False) -> np.ndarray:
        """(n, m) floats: p itself when ``soft``, else the decisions as 1.0 / 0.0."""
        return self.probs.astype(float) if soft else self.decisions.astype(float)


# --------------------------------------------------------------------------------------------
# Pure pieces


def parse_verdict(
    answer: str, choices: Sequence[str] = ("Yes", "No"), rule: str = "strict"
) -> bool | None:
    """True / False for an answer holding ``[[Yes]]`` / ``[[No]]``; None when it cannot be read.

    ``strict``: exactly one marker in the whole answer, followed by nothing but white space and
    closing punctuation or emphasis (``.``, ``*``, ``)``); an answer that names both, or whose
    marker is followed by more text, is unparsed. ``contains`` (the released code's rule):
    ``[[Yes]]`` anywhere is satisfied, else ``[[No]]`` anywhere is not, else unparsed.
    """
    yes, no = (f"[[{c}]]" for c in choices[:2])
    if rule == "contains":
        if yes in answer:
            return True
        return False if no in answer else None
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


def conversation_text(prompt: str | None, response: str) -> str:
    """The conversation in labelled turns, or the text alone when there is no separate prompt
    (a whole conversation passed as the response)."""
    if prompt is None:
        return response
    return render_conversation(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    )


def policy_text(prompt: str | None, response: str, template: str | None) -> str:
    """The conversation as the policy read and wrote it: the request in the policy's prompt
    template (``...{prompt}...``), then the response (the released judge decodes the rollout)."""
    if prompt is None:
        return response
    if template and "{prompt}" in template:
        prompt = template.replace("{prompt}", prompt)
    return prompt + response


def fit_conversation(
    prompt: str | None,
    response: str,
    room: int,
    count: Callable[[str], int],
    head: Callable[[str, int], str],
    marker: str,
    render: Callable[[str | None, str], str] = conversation_text,
) -> tuple[str | None, str, bool]:
    """``(prompt, response, cut)`` shortened so the rendered conversation takes at most ``room``
    tokens (``render(prompt, response)`` is the conversation as the judge reads it).

    The response is what is judged, so it keeps at least half the room: the request is cut
    (its head kept) only when it alone takes more than the other half. Each cut piece keeps its
    head and ends with ``marker``. ``count(text)`` counts tokens; ``head(text, n)`` is the text of
    the first ``n`` tokens.
    """
    if count(render(prompt, response)) <= room:
        return prompt, response, False
    frame = count(render("" if prompt is not None else None, ""))  # role labels, template
    marked = count("\n" + marker) + 1
    budget = max(0, room - frame)
    n_prompt = count(prompt) if prompt is not None else 0
    if n_prompt > budget // 2:  # the request too must give way
        prompt = _cut(prompt, budget // 2 - marked, head, marker)
        n_prompt = count(prompt)
    response = _cut(response, budget - n_prompt - marked, head, marker)
    return prompt, response, True


def _cut(text: str, keep: int, head: Callable[[str, int], str], marker: str) -> str:
    return f"{head(text, max(0, keep)).rstrip()}\n{marker}"


def check_settings(cfg: DictConfig) -> None:
    """Refuses judge settings that cannot work, naming each key as the command line spells it
    (the stages' ``check`` calls it before any model loads)."""
    from autorule.core.config import ConfigError, check_choice, check_number

    section = cfg.judge
    check_choice(section.mode, "judge.mode", MODES)
    check_choice(section.truncation, "judge.truncation", TRUNCATIONS)
    check_choice(section.parse, "judge.parse", PARSES)
    check_number(section.threshold, "judge.threshold", integer=False, low=0, high=1, low_open=True)
    check_number(section.top_logprobs, "judge.top_logprobs", low=5)
    check_number(section.max_input_tokens, "judge.max_input_tokens", low=MIN_ROOM, none_ok=True)
    for key in ("max_unparsed_share", "max_failed_share"):
        check_number(section[key], f"judge.{key}", integer=False, low=0, high=1)
    try:
        check_choices([str(c) for c in section.choices])
    except ValueError as err:
        raise ConfigError(f"judge.choices={list(section.choices)}: {err}") from None
    prompts = section.prompts
    check_choice(
        prompts.conversation_format, "judge.prompts.conversation_format", CONVERSATION_FORMATS
    )
    try:
        for mode in MODES:
            fill(str(prompts[mode]), f"judge.prompts.{mode}", rule="", conversation="")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if section.truncation == "released" and not section.max_input_tokens:
        log.info(
            "judge.truncation=released without judge.max_input_tokens: a local judge cuts at "
            "its context window, a served one does not cut"
        )


class RuleJudge:
    """Checks responses against rules with the LLM of role ``judge.llm``.

    ``llm``: a backend to use instead of building the role's (tests, notebooks). ``device``: for
    a local judge configured with ``device: auto``, the device it runs on (a training process's).
    """

    def __init__(self, cfg: DictConfig, llm: LLM | None = None, device: str | None = None):
        check_settings(cfg)
        section = cfg.judge
        self.mode, self.truncation, self.parse = (
            str(section.mode),
            str(section.truncation),
            str(section.parse),
        )
        self.threshold = float(section.threshold)
        self.soft = bool(section.soft)
        self.choices = tuple(str(c) for c in section.choices)
        self.top_logprobs = int(section.top_logprobs)
        self.prompts = OmegaConf.to_container(section.prompts, resolve=True)
        self.opening = str(self.prompts.get("opening") or "") if self.mode == "logprob" else ""
        self.prompt_template = section.get("prompt_template")
        self.max_input_tokens = section.get("max_input_tokens")
        self.max_unparsed_share = float(section.max_unparsed_share)
        self.max_failed_share = float(section.max_failed_share)
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
        self._tokenizer_name = self._find_tokenizer(cfg, section.get("tokenizer"))
        self._tokenizer = None
        self._budget: int | None = None
        if self.mode == "logprob":
            self.check_verdict_tokens()

    # ----------------------------------------------------------------------------------------
    # The judge's tokenizer: counts tokens, checks the verdict tokens

    def _find_tokenizer(self, cfg: DictConfig, name: str | None) -> str:
        if name == "tiny":
            from autorule.data.models import resolve

            return resolve(cfg)
        return str(name or self.llm.model)

    @property
    def tokenizer(self):
        """The judge's tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_name)
            except (OSError, ValueError) as err:
                raise OSError(
                    f"the rule judge counts prompt tokens (judge.max_input_tokens) and checks "
                    f"its verdict tokens (judge.mode=logprob) with its tokenizer; could not load "
                    f"{self._tokenizer_name!r} (set judge.tokenizer to a local folder or hub id)"
                ) from err
        return self._tokenizer

    def check_verdict_tokens(self) -> None:
        """Refuses choices the judge's tokenizer cannot show as the reply's next token after the
        opening (the verdict-token rule, :func:`autorule.llm.base.check_verdict_tokens`)."""
        try:
            check_verdict_tokens(self.tokenizer, self.choices, self.opening)
        except ValueError as err:
            raise ValueError(
                f"judge.choices={list(self.choices)} cannot be read in logprob mode with the "
                f"tokenizer of {self._tokenizer_name}: {err}"
            ) from None

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _count(self, text: str) -> int:
        return len(self._ids(text))

    def _head(self, text: str, n: int) -> str:
        return self.tokenizer.decode(self._ids(text)[:n])

    def _chat_tokens(self, messages: Messages) -> int:
        """Tokens of a request as the model reads it (chat template included)."""
        tokenizer = self.tokenizer
        if not tokenizer.chat_template:
            return self._count("\n\n".join(m["content"] for m in messages))
        continuing = messages[-1]["role"] == "assistant"
        return len(
            tokenizer.apply_chat_template(
                messages,
                tokenize=True,
                add_generation_prompt=not continuing,
                continue_final_message=continuing,
                return_dict=True,
            )["input_ids"]
        )

    def budget(self) -> int | None:
        """Tokens one prompt may take: ``judge.max_input_tokens``, or for a local judge without
        it, its context window (so the backend never cuts a prompt on its own); None: no cut."""
        if self.max_input_tokens:
            return int(self.max_input_tokens)
        if self._budget is None:
            limit = getattr(self.llm, "input_limit", None)
            self._budget = int(limit()) if callable(limit) else 0
        return self._budget or None

    # ----------------------------------------------------------------------------------------
    # Prompts

    def message(self, content: str) -> Messages:
        """One request: the prompt, and in logprob mode the opening of the judge's reply."""
        request = [{"role": "user", "content": content}]
        if self.opening:
            request.append({"role": "assistant", "content": self.opening})
        return request

    def render(self, rule: str, conversation: str) -> str:
        """The mode's template with the rule and the conversation filled in."""
        where = f"judge.prompts.{self.mode}"
        return fill(self.prompts[self.mode], where, rule=rule, conversation=conversation)

    def show(self, prompt: str | None, response: str) -> str:
        """The conversation as the prompt set shows it (``conversation_format``)."""
        if self.prompts["conversation_format"] == "policy":
            return policy_text(prompt, response, self.prompt_template)
        return conversation_text(prompt, response)

    def conversation(self, prompt: str | None, response: str, room: int | None) -> tuple[str, bool]:
        """The conversation shown, cut inside the response to ``room`` tokens when given."""
        cut = False
        if room is not None:
            prompt, response, cut = fit_conversation(
                prompt,
                response,
                room,
                self._count,
                self._head,
                self.prompts["cut_marker"],
                render=self.show,
            )
        return self.show(prompt, response), cut

    def frame_tokens(self, rule: str) -> int:
        """Tokens of a request about ``rule`` with an empty conversation."""
        return self._chat_tokens(self.message(self.render(rule, "")))

    def conversation_room(self, rules: Sequence[str], budget: int) -> int:
        """Tokens left for the conversation once the template and the longest rule are in: one
        room fits every rule."""
        longest = max(rules, key=self._count)
        room = budget - self.frame_tokens(longest) - TOKEN_SLACK
        if room < MIN_ROOM:
            raise ValueError(
                f"judge.max_input_tokens={budget} leaves {room} tokens for the conversation once "
                "the instructions and the longest rule are in: raise it"
            )
        return room

    def check_rules(self, rules: Sequence[str], source: str) -> None:
        """Refuses, when the rule set is read, a rule that leaves the conversation fewer than
        :data:`MIN_ROOM` tokens of the budget (``source`` names the rule file)."""
        budget = self.budget()
        if not budget:
            return
        for index, rule in enumerate(rules):
            room = budget - self.frame_tokens(rule) - TOKEN_SLACK
            if room < MIN_ROOM:
                raise ValueError(
                    f"{source}: rule {index} ({len(rule)} characters, {self._count(rule)} tokens) "
                    f"leaves {room} of the judge's {budget} prompt tokens for the conversation "
                    "(judge.max_input_tokens, or the local judge's context): shorten the rule or "
                    "raise judge.max_input_tokens"
                )

    def cut_released(self, content: str, budget: int) -> tuple[str, bool]:
        """``content`` cut from the right so that the whole request, chat template included,
        takes at most ``budget`` tokens (the released code's truncation)."""
        over = self._chat_tokens(self.message(content)) - budget
        if over <= 0:
            return content, False
        ids = self._ids(content)
        keep = len(ids) - over
        while keep > 0:
            cut = self.tokenizer.decode(ids[:keep])
            if self._chat_tokens(self.message(cut)) <= budget:
                return cut, True
            keep -= 1
        return "", True

    def requests(
        self, responses: Sequence, rules: Sequence[str], prompts: Sequence | None = None
    ) -> list[Messages]:
        """One request per (response, rule), response by response."""
        return self._requests(responses, rules, prompts)[0]

    def _requests(
        self, responses: Sequence, rules: Sequence[str], prompts: Sequence | None
    ) -> tuple[list[Messages], int]:
        if prompts is not None and len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        budget = self.budget()
        inside = budget is not None and self.truncation == "inside_response"
        room = self.conversation_room(rules, budget) if inside else None
        requests, cut = [], 0
        for i, response in enumerate(responses):
            prompt = None
            if prompts is not None:
                prompt = strip_template(_as_text(prompts[i]), self.prompt_template)
            shown, shortened = self.conversation(prompt, _as_text(response), room)
            cut += len(rules) * shortened
            for rule in rules:
                content = self.render(rule, shown)
                if budget is not None and self.truncation == "released":
                    content, shortened = self.cut_released(content, budget)
                    cut += shortened
                requests.append(self.message(content))
        if cut:
            log.info(
                "judge: %d of %d prompts cut to %d tokens (judge.truncation=%s)",
                cut,
                len(requests),
                budget,
                self.truncation,
            )
        return requests, cut

    # ----------------------------------------------------------------------------------------
    # Verdicts

    def where(self) -> str:
        """The judge's address for error messages: its URL, or its backend and model."""
        url = getattr(self.llm, "base_url", None) or getattr(self.llm, "endpoint_url", None)
        return f"judge.llm.base_url={url}" if url else f"{self.llm.backend} model {self.llm.model}"

    def judge(
        self, responses: Sequence, rules: Sequence[str], prompts: Sequence | None = None
    ) -> JudgeResult:
        """Verdicts of every response on every rule.

        ``responses``: the texts judged (strings, or message lists). ``prompts``: the request
        each answered (formatted prompts are shown bare or as the policy saw them, see
        ``judge.prompt_template``); None when each response already holds the whole
        conversation. All requests go to the LLM layer at once, which runs them concurrently
        (served judges) or in batches (local ones).
        """
        n, m = len(responses), len(rules)
        if n == 0 or m == 0:
            probs = np.zeros((n, m), dtype=float)
            return JudgeResult(probs, probs >= 1.0, 0, 0, [[] for _ in range(n)])
        requests, cut = self._requests(responses, rules, prompts)
        result = self.read(self.ask(requests), n, m)
        result.cut = cut
        return result

    def ask(self, requests: list[Messages]):
        if self.mode == "generate":
            return self.llm.complete_all(requests, desc="judge")
        return self.llm.verdict_all(requests, self.choices, self.top_logprobs, desc="judge")

    def probability(self, completion) -> float | None:
        """p(Yes) of one answer or verdict; None when it cannot be read."""
        if self.mode == "generate":
            verdict = parse_verdict(completion.text, self.choices, self.parse)
            return None if verdict is None else float(verdict)
        return yes_probability(completion.choice_logprobs or {}, self.choices)

    def read(self, completions: Sequence, n: int, m: int) -> JudgeResult:
        """The (n, m) verdicts of the answers to :meth:`requests`."""
        failed = [c for c in completions if not c.ok]
        if len(failed) == len(completions):
            raise JudgeOutageError(
                f"every judge call failed (the judge at {self.where()}); the first: "
                f"{failed[0].error}"
            )
        probs = np.zeros(n * m, dtype=float)
        unparsed = 0
        for k, completion in enumerate(completions):
            if not completion.ok:
                continue
            p = self.probability(completion)
            if p is None:
                unparsed += 1
            else:
                probs[k] = p
        if failed:
            log.warning("judge: %d of %d calls failed (not satisfied)", len(failed), n * m)
        probs = probs.reshape(n, m)
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


class StepGuard:
    """Watches the verdicts of each training step (one call of the rules reward per step).

    * failed calls beyond ``judge.max_failed_share``: :class:`JudgeOutageError`, raised inside
      the reward function, so the step stops before its optimizer update and the last
      checkpoint holds no step trained on missing verdicts;
    * every verdict of the first step unparsed: :class:`UnreadableJudgeError` (a judge that never
      answers would otherwise train on a constant reward);
    * unparsed or failed verdicts beyond ``judge.max_unparsed_share``: a warning.
    """

    def __init__(self, judge: RuleJudge):
        self.judge = judge
        self.steps = 0

    def check(self, result: JudgeResult) -> None:
        self.steps += 1
        judge = self.judge
        failed, unparsed, size = across_processes(result.failed, result.unparsed, result.size)
        if failed / size > judge.max_failed_share:
            raise JudgeOutageError(
                f"{failed} of {size} judge calls failed after their retries in this step "
                f"(more than judge.max_failed_share={judge.max_failed_share}); the step stopped "
                f"before its optimizer update. Check the judge at {judge.where()}, then re-run "
                "the same command: training resumes from the last checkpoint and redoes the step"
            )
        if self.steps == 1 and unparsed == size:
            raise UnreadableJudgeError(
                f"not one of the {size} verdicts of the first step could be read "
                f"(judge.mode={judge.mode}, judge.parse={judge.parse}, "
                f"judge.choices={list(judge.choices)}, the judge at {judge.where()}): the rules "
                "reward would be a constant. Check judge.llm.model and judge.prompts"
            )
        bad = (unparsed + failed) / size
        if bad > judge.max_unparsed_share:
            log.warning(
                "judge: %d unparsed and %d failed of %d verdicts in this step (%.0f%%, above "
                "judge.max_unparsed_share=%s): they count as not satisfied",
                unparsed,
                failed,
                size,
                100 * bad,
                judge.max_unparsed_share,
            )


def across_processes(*counts: int) -> tuple[int, ...]:
    """``counts`` summed over the processes of a distributed run (each judges its own share of
    a step's completions), so that every process takes the same decision: one process stopping
    alone would leave the others waiting in the step's next collective. Unchanged outside a
    distributed run."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return counts
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor(counts, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return tuple(int(round(value)) for value in total.tolist())
