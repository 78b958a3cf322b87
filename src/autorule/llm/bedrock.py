"""``llm=bedrock``: models on Amazon Bedrock through the Converse API (boto3 ``bedrock-runtime``).

Credentials come from boto3's usual chain (environment, ``~/.aws``, instance role); none is ever
read from or written to autorule's config. DeepSeek-R1 on Bedrock returns its chain of thought as a
``reasoningContent`` block beside the ``text`` block; both are kept, separately.

botocore's own retries are switched off (``total_max_attempts=1``): :mod:`autorule.llm.base`
retries with jittered backoff, and two retry layers would multiply (8 x 3 attempts per call).
"""

from __future__ import annotations

from autorule.core.secrets import add_known_secret
from autorule.llm.base import Completion, Messages, RemoteLLM, UnusableAnswerError

# Error codes Bedrock uses for conditions that pass with time.
RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "TooManyRequestsException",
        "ServiceUnavailableException",
        "InternalServerException",
        "ModelTimeoutException",
        "ModelNotReadyException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


class BedrockLLM(RemoteLLM):
    """Chat completions from the Bedrock Converse API."""

    backend = "bedrock"

    def __init__(
        self,
        *,
        region: str,
        endpoint_url: str | None = None,
        read_timeout: float = 3600,
        connect_timeout: float = 60,
        **common,
    ):
        super().__init__(**common)
        import boto3
        from botocore.config import Config

        if self.timeout is not None:  # a role's own limit (judge.llm.timeout) wins when lower
            read_timeout = min(float(read_timeout), self.timeout)
        config = Config(
            read_timeout=read_timeout,
            connect_timeout=connect_timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},
            # botocore's default pool holds 10 connections; more threads would queue for one.
            max_pool_connections=self.max_concurrency,
        )
        # boto3 clients are thread-safe (sessions are not): one client serves every thread.
        session = boto3.session.Session()
        self.client = session.client(
            "bedrock-runtime", region_name=region, endpoint_url=endpoint_url or None, config=config
        )
        # The credentials boto3 found (environment, ~/.aws files, role) are masked in whatever
        # autorule writes, should a server echo a signed request's headers back.
        credentials = session.get_credentials()
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            for value in (frozen.access_key, frozen.secret_key, frozen.token):
                add_known_secret(value)

    def call_once(self, messages: Messages) -> Completion:
        system = [{"text": m["content"]} for m in messages if m["role"] == "system"]
        turns = [
            {"role": m["role"], "content": [{"text": m["content"]}]}
            for m in messages
            if m["role"] != "system"
        ]
        kwargs = {
            "modelId": self.model,
            "messages": turns,
            "inferenceConfig": {"temperature": self.temperature, "maxTokens": self.max_tokens},
        }
        if system:
            kwargs["system"] = system
        response = self.client.converse(**kwargs)
        # botocore turns a 200 whose body is not JSON into a response without "output", so a
        # missing content block is how a broken gateway shows: a failed attempt, not "".
        message = (response.get("output") or {}).get("message") or {}
        blocks = message.get("content")
        if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
            raise UnusableAnswerError(
                "the response has no content block (a 200 whose body is not the Converse API's "
                "JSON?)"
            )
        text = "".join(str(b["text"]) for b in blocks if "text" in b)
        reasoning = "".join(
            str((b["reasoningContent"].get("reasoningText") or {}).get("text", ""))
            for b in blocks
            if isinstance(b.get("reasoningContent"), dict)
        )
        usage = response.get("usage")
        counts = (
            {
                "input_tokens": int(usage.get("inputTokens") or 0),
                "output_tokens": int(usage.get("outputTokens") or 0),
            }
            if isinstance(usage, dict) and "inputTokens" in usage
            else {"tokens_from": "unknown"}
        )
        return Completion(
            text=text,
            reasoning=reasoning,
            finish_reason=response.get("stopReason") or None,
            **counts,
        )

    @property
    def endpoint(self) -> str:
        return self.client.meta.endpoint_url

    def probe(self) -> None:
        """A TCP connection to the endpoint: the Converse API has no free request, and a
        connection that opens is what a dead host or a wrong port lacks."""
        import socket
        from urllib.parse import urlparse

        url = urlparse(self.endpoint)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=self.PROBE_TIMEOUT).close()
        except OSError as err:
            raise self.unreachable(f"cannot be reached ({err})") from None

    def is_retryable(self, error: BaseException) -> bool:
        from botocore.exceptions import ClientError, HTTPClientError, SSLError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        if isinstance(error, SSLError):  # a certificate that fails validation fails again
            return False
        # The transport errors botocore's own "standard" retry mode retries. Two families:
        # HTTPClientError (read timeouts, connections closed mid-response) and ConnectionError
        # (refused connections: EndpointConnectionError; connect timeouts: ConnectTimeoutError).
        if isinstance(error, (HTTPClientError, BotoConnectionError)):
            return True
        if isinstance(error, ClientError):
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return code in RETRYABLE_CODES or status == 429 or status >= 500
        return False

    def describe_error(self, error: BaseException) -> str:
        from botocore.exceptions import ClientError

        if isinstance(error, ClientError):
            # str(ClientError) reads "... when calling the Converse operation (reached max
            # retries: 0): ..."; botocore's count is 0 because its retries are off, which next to
            # our attempt count reads as a contradiction. Code, status and message say it all.
            info = error.response.get("Error", {})
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            code = info.get("Code") or type(error).__name__
            message = info.get("Message") or ""
            return f"{code} (HTTP {status})" + (f": {message}" if message else "")
        return super().describe_error(error)
