"""An OpenAI-compatible chat provider: the ``openai`` SDK's ``AsyncOpenAI`` on any ``base_url``.

One client per (base_url, api_key) and process, reused by every tenant that shares them (:func:`client_for`).
The SDK retries once (429, 5xx, connection errors); the whole call, retry included, is bounded by the timeout.
:func:`map_error` is the one place that turns the SDK's errors into ours.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from llm.exceptions import BadCompletion, LLMError, ProviderError, ProviderTimeout

if TYPE_CHECKING:  # the SDK is a heavy import: loaded on the first call, never at start-up
    from openai import AsyncOpenAI

MAX_RETRIES = 1
_CLIENTS: dict[tuple[str, str], AsyncOpenAI] = {}


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: str  # "system" | "user" | "assistant"
    content: str


class ChatRequest(BaseModel):
    """One chat completion to ask for; ``json_schema`` asks for structured output (strict)."""

    model_config = ConfigDict(frozen=True)

    messages: tuple[ChatMessage, ...]
    max_tokens: int = Field(gt=0)
    schema_name: str | None = None
    json_schema: dict[str, Any] | None = None
    temperature: float = 0.3

    def token_bound(self) -> int:
        """An upper bound of the prompt tokens: a byte-level BPE token covers at least one UTF-8 byte, plus the
        few tokens of chat framing per message. Reserving this keeps the budget safe whatever the tokenizer."""
        chars = sum(len(m.content.encode()) + 8 for m in self.messages) + 8
        if self.json_schema is not None:
            chars += len(json.dumps(self.json_schema).encode())
        return chars

    def worst_case(self) -> int:
        return self.token_bound() + self.max_tokens


class Completion(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens the provider served from its prompt cache
    finish_reason: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ProviderConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    base_url: str
    api_key: str
    model: str
    timeout_seconds: float


def client_for(base_url: str, api_key: str, timeout_seconds: float) -> AsyncOpenAI:
    """The process's client for (base_url, api_key), made on first use."""
    client = _CLIENTS.get((base_url, api_key))
    if client is None:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_seconds, max_retries=MAX_RETRIES)
        _CLIENTS[(base_url, api_key)] = client
    return client


async def close_clients() -> None:
    """Close every client (at shutdown, and between tests that start doubles on new ports)."""
    clients = list(_CLIENTS.values())
    _CLIENTS.clear()
    for client in clients:
        await client.close()


class ChatProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    async def complete(self, request: ChatRequest) -> Completion:
        """Ask for one completion; raise :class:`ProviderTimeout` after ``timeout_seconds`` in all."""
        client = client_for(self.config.base_url, self.config.api_key, self.config.timeout_seconds)
        kwargs: dict[str, Any] = {}
        if request.json_schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name or "answer", "schema": request.json_schema, "strict": True},
            }
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                response = await client.chat.completions.create(
                    model=self.config.model,
                    messages=[{"role": m.role, "content": m.content} for m in request.messages],  # type: ignore[misc]
                    max_tokens=request.max_tokens,
                    temperature=request.temperature,
                    **kwargs,
                )
        except Exception as exc:
            raise map_error(exc) from exc
        return _completion(response, self.config.model)


def _completion(response: Any, model: str) -> Completion:
    usage = response.usage
    if usage is None or not response.choices:
        raise BadCompletion("the answer has no usage or no choices")
    details = getattr(usage, "prompt_tokens_details", None)
    choice = response.choices[0]
    return Completion(
        text=choice.message.content or "",
        model=response.model or model,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=(getattr(details, "cached_tokens", 0) or 0) if details is not None else 0,
        finish_reason=choice.finish_reason,
    )


def map_error(exc: BaseException) -> LLMError:
    """The SDK's (or asyncio's) exception as ours."""
    import openai

    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, TimeoutError | openai.APITimeoutError):
        return ProviderTimeout("no answer within the timeout")
    if isinstance(exc, openai.APIStatusError):
        return ProviderError(f"HTTP {exc.status_code}: {exc.message}", exc.status_code)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(f"cannot reach the API: {exc}")
    if isinstance(exc, openai.OpenAIError | ValueError):
        return BadCompletion(str(exc))
    raise exc
