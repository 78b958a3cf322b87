"""``llm=openai``: any OpenAI-compatible chat-completions server (vLLM, SGLang, OpenAI itself...).

The API key is read at start-up from the environment variable named by ``api_key_env``; config,
logs and manifests only ever hold the variable's name. Reasoning is taken from a separate
``reasoning_content`` (vLLM's reasoning parsers) or ``reasoning`` field of the message when the
server sends one, and otherwise split from inline ``<think>...</think>`` tags.

Verdicts (:meth:`LLM.verdict_all`) are one-token chat completions with ``logprobs`` and
``top_logprobs``, which vLLM's and SGLang's servers and OpenAI's API answer; the choices are read
from the alternatives listed for that token (:func:`autorule.llm.base.counts_for`).

A request that ends with an assistant message (the opening of the reply, e.g. the rule judge's
``[[``) asks the server to continue that message rather than start a new one: vLLM's and
SGLang's chat servers take ``continue_final_message: true`` with ``add_generation_prompt:
false`` for it. OpenAI's own API has no such switch and answers in a new message.

The SDK's own retries are off (``max_retries=0``); :mod:`autorule.llm.base` retries instead.
"""

from __future__ import annotations

import json
import logging
import os

from autorule.core.secrets import add_known_secret
from autorule.llm.base import (
    Completion,
    Messages,
    RemoteLLM,
    UnusableAnswerError,
    Verdict,
    choice_logprobs,
)

log = logging.getLogger(__name__)


class OpenAICompatLLM(RemoteLLM):
    """Chat completions from an OpenAI-compatible HTTP endpoint."""

    backend = "openai"
    supports_verdicts = True

    def __init__(
        self,
        *,
        base_url: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 3600,
        **common,
    ):
        super().__init__(timeout=timeout, **common)
        import openai

        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            # Local servers (vLLM, SGLang) accept any key; a real API answers 401, reported as a
            # non-retryable failure.
            log.warning(
                "environment variable %s is not set; sending a placeholder API key", api_key_env
            )
        # Masked in whatever autorule writes, whatever the variable is called: gateways echo
        # the Authorization header into error messages.
        add_known_secret(key)
        self.base_url = base_url
        self.client = openai.OpenAI(
            base_url=base_url, api_key=key or "not-set", timeout=timeout, max_retries=0
        )

    def call_once(self, messages: Messages) -> Completion:
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=messages,
                temperature=self.temperature,
                max_tokens=self.max_tokens,
                **continuation(messages),
            )
        except json.JSONDecodeError as err:  # a 200 whose body is not JSON (a broken gateway)
            raise UnusableAnswerError(f"the response body is not JSON ({err})") from None
        # The SDK builds its objects without validation, so a body of the wrong shape arrives as
        # missing fields: a failed attempt, not an empty answer.
        choices = getattr(response, "choices", None)
        message = getattr(choices[0], "message", None) if choices else None
        if message is None:
            raise UnusableAnswerError("the response has no choices[0].message")
        extra = message.model_extra or {}
        reasoning = extra.get("reasoning_content") or extra.get("reasoning") or ""
        return Completion(
            text=message.content or "",
            reasoning=str(reasoning),
            finish_reason=getattr(choices[0], "finish_reason", None) or None,
            **usage_counts(response),
        )

    def verdict_once(self, messages: Messages, verdict: Verdict) -> Completion:
        choices, top_logprobs = verdict
        response = self.client.chat.completions.create(
            model=self.model,
            messages=messages,
            temperature=self.temperature,
            max_tokens=1,  # the verdict is the first token; nothing is generated past it
            logprobs=True,
            top_logprobs=top_logprobs,
            **continuation(messages),
        )
        choice = response.choices[0]
        content = choice.logprobs.content if choice.logprobs is not None else None
        if not content:
            raise ValueError(
                f"the server at {self.base_url} sent no log-probabilities for {self.model}; "
                "it must support logprobs=true with top_logprobs (vLLM: --max-logprobs)"
            )
        candidates = [(alt.token, alt.logprob) for alt in content[0].top_logprobs]
        candidates.append((content[0].token, content[0].logprob))  # the token sampled
        # The sampled token is usually among the alternatives too: count each token once.
        unique = list(dict(candidates).items())
        return Completion(
            text=choice.message.content or "",
            choice_logprobs=choice_logprobs(unique, choices),
            finish_reason=choice.finish_reason or None,
            **usage_counts(response),
        )

    @property
    def endpoint(self) -> str:
        return self.base_url

    def probe(self) -> None:
        """``GET /models``: every OpenAI-compatible server (vLLM, SGLang, llama.cpp, OpenAI)
        answers it without running the model; one that lacks the route (404) is still up."""
        import openai

        client = self.client.with_options(timeout=self.PROBE_TIMEOUT)
        try:
            client.models.list()
        except openai.APITimeoutError:
            raise self.unreachable(f"did not answer within {self.PROBE_TIMEOUT:g} s") from None
        except openai.APIConnectionError as err:
            raise self.unreachable(f"cannot be reached ({err.__cause__ or err})") from None
        except openai.APIStatusError as err:
            if err.status_code in (401, 403):
                raise self.unreachable(
                    f"refused the API key (HTTP {err.status_code}; it is read from the "
                    f"variable {self.role or 'llm'}.api_key_env names)"
                ) from None
            if err.status_code >= 500:
                raise self.unreachable(f"answered HTTP {err.status_code}") from None

    def is_retryable(self, error: BaseException) -> bool:
        import openai

        if isinstance(error, (openai.APITimeoutError, openai.APIConnectionError)):
            return True
        if isinstance(error, openai.APIStatusError):
            return error.status_code in (408, 409, 429) or error.status_code >= 500
        return False


def usage_counts(response) -> dict:
    """Token counts from the response's usage block; ``tokens_from="unknown"`` when the server
    sent none (some OpenAI-compatible servers do not)."""
    usage = getattr(response, "usage", None)
    if usage is None or getattr(usage, "prompt_tokens", None) is None:
        return {"tokens_from": "unknown"}
    return {
        "input_tokens": int(usage.prompt_tokens or 0),
        "output_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
    }


def continuation(messages: Messages) -> dict:
    """The request options that make the server continue a final assistant message (vLLM's and
    SGLang's chat servers); none for a request that ends with the user's turn."""
    if not messages or messages[-1].get("role") != "assistant":
        return {}
    return {"extra_body": {"continue_final_message": True, "add_generation_prompt": False}}
