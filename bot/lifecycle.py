"""How a command runs and stops: SIGINT (Ctrl-C) and SIGTERM (``docker stop``, ``kill``) at any moment.

A signal cancels the command's task, so every ``finally`` runs: clients close and the embedded Redis is shut
down, whether start-up had finished or not. A command that has a graceful way to stop (the server lets
requests finish) registers it with :func:`gentle_stop`; a second signal then cancels. Whatever embedded Redis
a cancellation left behind is stopped last.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

_gentle: list[Callable[[], None]] = []


def run(coro: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine to its exit status (128 + the signal's number when a signal stopped it)."""
    received: list[int] = []
    try:
        return _loop_runner()(_until_signalled(coro, received))
    except asyncio.CancelledError:
        return 128 + (received[0] if received else signal.SIGINT)
    finally:
        if "bot.redis" in sys.modules:  # only a command that used Redis can have started one
            from bot.redis import stop_all_embedded

            stop_all_embedded()


@contextmanager
def gentle_stop(callback: Callable[[], None]) -> Iterator[None]:
    """While inside, the first signal calls ``callback`` instead of cancelling the command."""
    _gentle.append(callback)
    try:
        yield
    finally:
        _gentle.remove(callback)


async def _until_signalled(coro: Coroutine[Any, Any, int], received: list[int]) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        received.append(signum)
        if len(received) == 1 and _gentle:
            _gentle[-1]()
        else:
            task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    return await coro


def _loop_runner() -> Callable[[Coroutine[Any, Any, int]], int]:
    """uvloop where it is installed (it comes with uvicorn[standard] on Linux and macOS)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


class PortBusy(Exception):
    pass


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound before anything else starts so that a busy port is reported at
    once (not after the runtime and the embedded Redis came up and went down again)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortBusy(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}. Another `bookingbot serve` (or another "
            f"program) may be using it: stop it, or pick another port: --port {port + 10} "
            f"(make demo PORT={port + 10})"
        ) from None
    sock.set_inheritable(True)
    return sock


def serve_forever(
    config: Any, sock: socket.socket, *, on_stop: Callable[[], None] = lambda: None
) -> Coroutine[Any, Any, None]:
    """uvicorn on ``sock`` whose first SIGINT / SIGTERM is a graceful shutdown, ``on_stop`` first (uvicorn's
    own signal handling would re-raise the signal after shutting down, cancelling our clean-up half-way)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            with gentle_stop(self.stop):
                yield

        def stop(self) -> None:
            on_stop()
            self.should_exit = True

    return Server(config).serve(sockets=[sock])
