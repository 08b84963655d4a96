"""A request body must arrive within a deadline: ASGI middleware under the FastAPI app.

uvicorn times out idle connections but not a body in progress, so a client trickling a body a byte at a time
would hold a connection and a task for as long as it likes. The middleware wraps ``receive``: once the
deadline (counted from the request's first read) has passed, the next read raises :class:`BodyTimeout`,
which the app answers with 408 (and the server then closes the connection, the body unread).
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BODY_TIMEOUT_S = 10.0


class BodyTimeout(Exception):
    """The request body did not arrive in time."""


class BodyDeadline:
    def __init__(self, app: ASGIApp, seconds: float = BODY_TIMEOUT_S) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, _Timed(receive, self.seconds), send)


class _Timed:
    """``receive`` with a deadline on the body; reads after the body (disconnect waits) are not timed."""

    def __init__(self, receive: Receive, seconds: float) -> None:
        self._receive = receive
        self._seconds = seconds
        self._deadline: float | None = None
        self._complete = False

    async def __call__(self) -> Message:
        if self._complete:
            return await self._receive()
        loop = asyncio.get_running_loop()
        if self._deadline is None:
            self._deadline = loop.time() + self._seconds
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            raise BodyTimeout(f"request body not received within {self._seconds:g} s") from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._complete = True
        return message
