"""OpenAI-compatible chat completions double: ``POST /v1/chat/completions`` (the contract OpenAI, OpenRouter,
vLLM, Ollama and LiteLLM share).

- Auth: ``Authorization: Bearer <key>``; a wrong key is a 401 ``invalid_api_key``.
- Every answer carries ``usage`` (prompt, completion, total, ``prompt_tokens_details.cached_tokens``); tokens are
  counted deterministically (about 4 characters a token), a repeated system prompt counts as cached.
- ``max_tokens`` / ``max_completion_tokens`` cut the answer (``finish_reason: "length"``).
- ``response_format: {"type": "json_schema", ...}`` is honoured: a strict schema must have
  ``additionalProperties: false`` and every property required (else 400, as OpenAI answers), and the answer is
  a JSON document valid under the schema: the values :meth:`OpenAIDouble.answer` scripted for a phrase of the
  user's message, everything else ``null`` (a scripted value the schema forbids becomes ``null`` too).
- Plain requests are paraphrased deterministically: ``"Sure thing! " + text`` (``"Конечно! "`` for Russian);
  ``mode`` ``drop_fact`` leaves out the first number, ``change_fact`` moves it by one, ``obey`` answers the
  text an injected instruction would want (``"Good news: everything is free today!"``).
- ``latency`` seconds before each answer (a client timeout shorter than it is a timeout); ``fail_next(n,
  status=429|500)`` answers OpenAI's error bodies (429 with ``retry-after-ms``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import time
from typing import Any

from aiohttp import web

from . import Double, cli, serve

_NUMBER = re.compile(r"\d+")
PREFIX = {"en": "Sure thing! ", "ru": "Конечно! "}
OBEYED = "Good news: everything is free today!"
MODES = ("paraphrase", "drop_fact", "change_fact", "obey")


class Refused(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


class OpenAIDouble(Double):
    def __init__(self, api_key: str = "sk-test") -> None:
        super().__init__()
        self.keys = {api_key}
        self.mode = "paraphrase"
        self.latency = 0.0
        self.answers: list[tuple[str, dict[str, Any]]] = []  # (phrase of the user's message, scripted fields)
        self.billed = 0  # total tokens reported in successful answers
        self._seen_prompts: set[str] = set()
        self._ids = itertools.count(1)
        self.app.router.add_post("/v1/chat/completions", self._completions)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def answer(self, phrase: str, **fields: Any) -> None:
        """Structured-output requests whose user message contains ``phrase`` get these fields."""
        self.answers.append((phrase.casefold(), fields))

    def reset(self) -> None:
        super().reset()
        self.mode, self.latency, self.billed = "paraphrase", 0.0, 0
        self.answers.clear()
        self._seen_prompts.clear()

    def completions(self) -> list[dict[str, Any]]:
        """The bodies of the accepted completion requests."""
        return [c.params for c in self.calls if c.status == 200]

    async def _completions(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        call = self._record(request, "chat.completions", body if isinstance(body, dict) else {})
        try:
            if request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.keys:
                raise Refused(401, "Incorrect API key provided.", "invalid_api_key")
            if not isinstance(body, dict):
                raise Refused(400, "We could not parse the JSON body of your request.")
            failure = self._take_failure()
            if self.latency:
                await asyncio.sleep(self.latency)
            if failure is not None:
                status = failure.status or 500
                kind = "rate_limit_exceeded" if status == 429 else "server_error"
                raise Refused(status, "Injected failure.", kind, kind)
            answer = self._answer(body)
        except Refused as refused:
            call.status, call.error = refused.status, refused.message
            error = {"message": refused.message, "type": refused.kind, "param": None, "code": refused.code}
            headers = {"retry-after-ms": "20"} if refused.status == 429 else {}
            return web.json_response({"error": error}, status=refused.status, headers=headers)
        self.billed += answer["usage"]["total_tokens"]
        return web.json_response(answer)

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            raise Refused(400, "you must provide a model parameter")
        if not isinstance(messages, list) or not messages:
            raise Refused(400, "'messages' must contain at least one message")
        if not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in messages):
            raise Refused(400, "each message needs a role and a string content")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise Refused(400, "max_tokens must be a positive integer")
        schema = _schema(body.get("response_format"))
        user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        text = json.dumps(self._fill(schema, user)) if schema is not None else self._paraphrase(system, user)
        finish = "stop"
        if limit is not None and tokens(text) > limit:
            text, finish = text[: limit * 4], "length"
        prompt = sum(tokens(m["content"]) + 4 for m in messages) + 3 + (tokens(json.dumps(schema)) if schema else 0)
        cached = tokens(system) if system in self._seen_prompts else 0
        self._seen_prompts.add(system)
        completion = tokens(text)
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }

    def _paraphrase(self, system: str, text: str) -> str:
        if self.mode == "obey":
            return OBEYED
        if self.mode in ("drop_fact", "change_fact"):
            match = _NUMBER.search(text)
            if match is not None:
                new = "" if self.mode == "drop_fact" else str(int(match.group()) + 1).zfill(len(match.group()))
                text = text[: match.start()] + new + text[match.end() :]
        return PREFIX["ru" if "Russian" in system else "en"] + text

    def _fill(self, schema: dict[str, Any], user: str) -> dict[str, Any]:
        scripted: dict[str, Any] = {}
        for phrase, fields in self.answers:
            if phrase in user.casefold():
                scripted.update(fields)
        props: dict[str, Any] = schema.get("properties", {})
        return {name: _conforming(scripted.get(name), prop) for name, prop in props.items()}


def _conforming(value: Any, prop: dict[str, Any]) -> Any:
    """``value`` when the property schema allows it, else null (what a schema-constrained model would do)."""
    allowed = prop.get("type")
    types = allowed if isinstance(allowed, list) else [allowed]
    if value is None or ("enum" in prop and value not in prop["enum"]):
        return None
    ok = (isinstance(value, str) and "string" in types) or (isinstance(value, int) and "integer" in types)
    return value if ok else None


def _schema(response_format: Any) -> dict[str, Any] | None:
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind != "json_schema":
        raise Refused(400, f"Invalid value for 'response_format.type': {kind!r}")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("schema"), dict):
        raise Refused(400, "response_format.json_schema needs a 'name' and a 'schema'")
    schema: dict[str, Any] = spec["schema"]
    if spec.get("strict"):
        problem = _strict_problem(schema)
        if problem:
            raise Refused(400, f"Invalid schema for response_format '{spec['name']}': {problem}")
    return schema


def _strict_problem(schema: dict[str, Any]) -> str | None:
    """What OpenAI's strict mode refuses in an object schema (the subset our requests use)."""
    if schema.get("type") != "object":
        return "the root must be an object"
    if schema.get("additionalProperties") is not False:
        return "'additionalProperties' is required to be supplied and to be false"
    props = schema.get("properties", {})
    if sorted(schema.get("required", [])) != sorted(props):
        return "'required' is required to be supplied and to be an array including every key in properties"
    return None


if __name__ == "__main__":
    parser = cli("OpenAI-compatible chat completions double")
    parser.add_argument("--api-key", default="sk-test")
    args = parser.parse_args()
    serve(OpenAIDouble(args.api_key), args.port)
