"""Provider API doubles: real HTTP servers on loopback that follow the vendors' documented contracts.

Each double records every call (``calls``), checks what it receives (auth, required fields, button counts and
lengths, ``callback_data`` bytes) and answers the vendor's own error when a rule is broken, and can be told to
fail the next N calls (``fail_next``). ``deliver`` posts a webhook to our server the way the vendor does
(signature header / secret included).

Start and stop one from a pytest fixture (``async with TelegramDouble(token) as tg: ...`` or
``await d.start()`` / ``await d.stop()``), from synchronous code (``with d.in_thread() as url: ...``), or as a
script: ``python -m tests.doubles.telegram --port 8081 --token 123:abc`` (from the repository root).

Under pytest this package imports as ``doubles`` (pytest puts ``tests/`` on ``sys.path``); elsewhere as
``tests.doubles``. The modules import each other relatively, so both work.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Self

import aiohttp
from aiohttp import web


@dataclass
class Call:
    """One request the double received, and how it answered."""

    method: str  # the vendor's method name ("sendMessage", "messages.send") or request path
    params: dict[str, Any]
    headers: dict[str, str]
    status: int = 200
    error: str | None = None  # the vendor's error text when the call was refused


@dataclass(frozen=True)
class Failure:
    """An injected failure: ``status`` and/or the vendor's error ``code`` (meaning depends on the vendor)."""

    status: int | None = None
    code: int | None = None
    retry_after: int | None = None


@dataclass
class Delivery:
    status: int
    text: str
    headers: dict[str, str] = field(default_factory=dict)


class Double:
    """The shared machinery: an aiohttp app on 127.0.0.1, a call log and a queue of injected failures."""

    def __init__(self) -> None:
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.calls: list[Call] = []
        self.url = ""
        self._failures: deque[Failure] = deque()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextmanager
    def in_thread(self, port: int = 0) -> Iterator[str]:
        """Run the double on its own event loop in a background thread; yields its base url."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        try:
            yield asyncio.run_coroutine_threadsafe(self.start(port=port), loop).result(timeout=10)
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int | None = None,
        code: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next ``n`` calls with the vendor's error for ``status`` / ``code``."""
        self._failures.extend(Failure(status, code, retry_after) for _ in range(n))

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def reset(self) -> None:
        """Forget recorded calls and pending failures (subclasses also forget what they accepted)."""
        self.calls.clear()
        self._failures.clear()

    def _take_failure(self) -> Failure | None:
        return self._failures.popleft() if self._failures else None

    def _record(self, request: web.Request, method: str, params: dict[str, Any]) -> Call:
        call = Call(method=method, params=params, headers=dict(request.headers))
        self.calls.append(call)
        return call

    async def _post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Delivery:
        """POST a webhook (the vendor calling our server)."""
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        async with self._client.post(url, data=body, headers=dict(headers)) as response:
            return Delivery(response.status, await response.text(), dict(response.headers))

    async def _get(self, url: str, params: Mapping[str, str]) -> Delivery:
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        async with self._client.get(url, params=dict(params)) as response:
            return Delivery(response.status, await response.text(), dict(response.headers))


async def form_params(request: web.Request) -> dict[str, Any]:
    """Parameters the way the vendors accept them: query string, then a form or JSON body."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        body = await request.json()
        if isinstance(body, dict):
            params.update(body)
    elif request.can_read_body:
        params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    return params


def serve(double: Double, port: int) -> None:
    """Run a double in the foreground until interrupted (the ``__main__`` of each double module)."""

    async def run() -> None:
        url = await double.start(port=port)
        print(f"{type(double).__name__} listening on {url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await double.stop()

    with suppress(KeyboardInterrupt):
        asyncio.run(run())


def cli(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0)
    return parser
