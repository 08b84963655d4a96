"""Crash suite, PostgreSQL part: the database cut off for ~10 s while messages flow through the message log.

A loopback TCP proxy stands between the log's engine and the real PostgreSQL. Mid-flow it aborts every open
connection and refuses new ones (its listening socket closed) for 10 s, then listens again on the same port.
Every row must end up written exactly once, and the writer task must still be running.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from bot import db, metrics
from bot.messagelog import LoggedMessage, MessageLog
from bot.tables import Conversation, Customer, Message
from tests._wait import until
from tests.conftest import DATABASE_URL

OUTAGE_S = 10.0
RATE = 100  # turns a second, each logged as one inbound row and two replies


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 that can drop every connection and refuse new ones until restored."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    async def listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections (nothing listens) and reset every open one."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()
        await self._server.wait_closed()

    async def aclose(self) -> None:
        await self.cut()
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        sink.transport.abort()
        self._links.discard(sink)


@pytest.fixture
async def proxy() -> AsyncIterator[CuttableProxy]:
    url = make_url(DATABASE_URL)
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.listen()
    yield proxy
    await proxy.aclose()


@pytest.fixture
async def tenant(pg_engine: AsyncEngine) -> AsyncIterator[str]:
    name = f"crash-pg-{uuid.uuid4().hex[:12]}"
    yield name
    async with pg_engine.begin() as conn:
        for table in (Message, Conversation, Customer):
            await conn.execute(delete(table).where(col(table.tenant) == name))


def _turn(tenant: str, n: int) -> list[LoggedMessage]:
    inbound = LoggedMessage(
        tenant=tenant,
        conversation=f"telegram:{n % 50}",
        channel="telegram",
        direction="in",
        at=datetime.now(UTC),
        text=f"turn {n}",
        event_id=str(n),
    )
    replies = [inbound.model_copy(update={"direction": "out", "seq": s, "text": f"reply {n}.{s}"}) for s in (1, 2)]
    return [inbound, *replies]


async def _produce(log: MessageLog, tenant: str, start: int, seconds: float) -> int:
    """Log ``RATE`` turns a second for ``seconds``; returns the next turn number."""
    n = start
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        for row in _turn(tenant, n):
            log.add(row)
        n += 1
        await asyncio.sleep(1 / RATE)
    return n


async def test_postgres_outage_loses_no_row_and_writes_none_twice(
    pg_engine: AsyncEngine, proxy: CuttableProxy, tenant: str
) -> None:
    through_proxy = make_url(DATABASE_URL).set(host="127.0.0.1", port=proxy.port)
    engine = db.make_engine(through_proxy.render_as_string(hide_password=False))
    log = MessageLog(engine)
    await log.start()
    errors = metrics.LOG_WRITE_ERRORS._value.get()
    try:
        turns = await _produce(log, tenant, 0, 2.0)
        await proxy.cut()
        turns = await _produce(log, tenant, turns, OUTAGE_S)
        assert log.backlog > 0 and log.writing
        await proxy.listen()
        turns = await _produce(log, tenant, turns, 2.0)

        async def all_written() -> bool:
            async with pg_engine.connect() as conn:
                count = await conn.scalar(select(func.count()).where(col(Message.tenant) == tenant))
            return log.backlog == 0 and count == 3 * turns

        assert await until(all_written, within=60), f"backlog {log.backlog} of {3 * turns} rows"
        assert log.writing, "the writer task died"
        assert metrics.LOG_WRITE_ERRORS._value.get() > errors  # the outage was felt
        async with pg_engine.connect() as conn:
            keys = (
                await conn.execute(
                    select(Message.event_id, Message.direction, Message.seq).where(col(Message.tenant) == tenant)
                )
            ).all()
        expected = {(str(n), d, s) for n in range(turns) for d, s in (("in", 0), ("out", 1), ("out", 2))}
        assert len(keys) == len(expected) and {tuple(k) for k in keys} == expected
    finally:
        await log.aclose()
        await engine.dispose()
