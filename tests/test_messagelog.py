"""The message log under failure: idempotent batches, storable text, refused rows, a bounded backlog, outages.

(Round trips, batching and the conversation rows are in ``tests/test_db.py``; a PostgreSQL outage through a
proxy is in ``tests/test_crash_postgres.py``.)
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Connection, delete, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from bot import db, metrics
from bot.messagelog import LoggedMessage, MessageLog
from bot.tables import Conversation, Customer, Message
from tests._wait import until

START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def row(tenant: str, n: int, *, seq: int = 0, text: str | None = None) -> LoggedMessage:
    return LoggedMessage(
        tenant=tenant,
        conversation="telegram:42",
        channel="telegram",
        direction="out" if seq else "in",
        at=START + timedelta(seconds=n),
        text=f"message {n}/{seq}" if text is None else text,
        event_id=f"e{n}",
        seq=seq,
    )


@pytest.fixture
async def pg_tenant(pg_engine: AsyncEngine) -> AsyncIterator[str]:
    name = f"test-log-{uuid.uuid4().hex[:12]}"
    yield name
    async with pg_engine.begin() as conn:
        for table in (Message, Conversation, Customer):
            await conn.execute(delete(table).where(col(table.tenant) == name))


async def _texts(log: MessageLog, tenant: str) -> list[str | None]:
    return [r.text for r in await log.conversation(tenant, "telegram:42")]


def _dropped(reason: str) -> float:
    return metrics.LOG_DROPPED.labels(reason)._value.get()


async def _written_twice_over(engine: AsyncEngine, tenant: str) -> None:
    """Write the same rows through two logs (a retried batch whose commit was never acknowledged)."""
    rows = [row(tenant, n, seq=s) for n in range(3) for s in range(3)]
    for _ in range(2):
        log = MessageLog(engine)
        for r in rows:
            log.add(r)
        log.add(rows[4])  # and once more inside one batch
        await log.aclose()
    assert await _texts(MessageLog(engine), tenant) == [r.text for r in rows]


async def test_rows_are_written_once_on_postgres(pg_engine: AsyncEngine, pg_tenant: str) -> None:
    await _written_twice_over(pg_engine, pg_tenant)


async def test_rows_are_written_once_on_sqlite(sqlite_engine: AsyncEngine) -> None:
    await _written_twice_over(sqlite_engine, "t")


async def test_rows_without_an_event_are_all_kept(sqlite_engine: AsyncEngine) -> None:
    log = MessageLog(sqlite_engine)
    for _ in range(2):
        log.add(row("t", 1).model_copy(update={"event_id": None}))
    await log.aclose()
    assert await _texts(log, "t") == ["message 1/0", "message 1/0"]


async def test_text_postgres_refuses_is_cleaned(pg_engine: AsyncEngine, pg_tenant: str) -> None:
    log = MessageLog(pg_engine)
    log.add(row(pg_tenant, 1, text="a\x00b"))
    # model_copy validates nothing: cleaning happens as rows are written, whatever made them
    log.add(row(pg_tenant, 1).model_copy(update={"seq": 1, "text": "half \ud800 pair", "state": "s\x00"}))
    await log.aclose()
    stored = await log.conversation(pg_tenant, "telegram:42")
    assert [(r.text, r.state) for r in stored] == [("ab", None), ("half ? pair", "s")]


async def test_a_refused_row_is_dropped_with_a_log_line_and_the_rest_written(
    pg_engine: AsyncEngine, pg_tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    log = MessageLog(pg_engine, batch_size=10)
    await log.start()
    before = _dropped("refused")
    for n in range(5):
        log.add(row(pg_tenant, n, seq=2**40 if n == 2 else 0))  # seq out of the column's range
    assert await until(lambda: log.backlog == 0)
    assert log.writing
    assert await _texts(log, pg_tenant) == [f"message {n}/0" for n in (0, 1, 3, 4)]
    assert _dropped("refused") == before + 1
    assert any("dropped the out row" in r.getMessage() and "event e2" in r.getMessage() for r in caplog.records)
    log.add(row(pg_tenant, 9))  # and the writer goes on
    await log.aclose()
    assert (await _texts(log, pg_tenant))[-1] == "message 9/0"


async def test_the_backlog_is_bounded_and_exported(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}")  # every write fails: no table
    log = MessageLog(engine, max_backlog=3, close_timeout=0.5)
    gauge = metrics.LOG_BACKLOG._value.get()
    before = _dropped("backlog_full")
    for n in range(5):
        log.add(row("t", n))
    assert log.backlog == 3 and metrics.LOG_BACKLOG._value.get() == gauge + 3
    assert _dropped("backlog_full") == before + 2
    assert [r.getMessage().split(" (")[0] for r in caplog.records if r.levelno == logging.ERROR] == [
        "message log: dropped the in row t/telegram:42 event e3 seq 0",
        "message log: dropped the in row t/telegram:42 event e4 seq 0",
    ]
    shutdown = _dropped("shutdown")
    await log.aclose()  # still failing at close: given up after close_timeout, each row logged and counted
    assert _dropped("shutdown") == shutdown + 3 and metrics.LOG_BACKLOG._value.get() == gauge
    await engine.dispose()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_writer_outlives_an_unreachable_database(pg_engine: AsyncEngine, pg_tenant: str) -> None:
    """asyncpg's own errors (connection refused, here) are retried like any other, and nothing is lost."""
    port = _closed_port()
    down = db.make_engine(f"postgresql://postgres@127.0.0.1:{port}/nowhere")
    log = MessageLog(down, retry_base=0.05, retry_cap=0.2)
    await log.start()
    errors = metrics.LOG_WRITE_ERRORS._value.get()
    for n in range(3):
        log.add(row(pg_tenant, n))
    assert await until(lambda: metrics.LOG_WRITE_ERRORS._value.get() >= errors + 3), "the writer stopped retrying"
    assert log.writing and log.backlog == 3
    with pytest.raises(TimeoutError):  # nothing is written while the database is down
        async with asyncio.timeout(0.3):
            await log.settled()
    log.engine = pg_engine  # the database is back (at another address: the same for the writer)
    async with asyncio.timeout(60):
        await log.settled()  # the worker's wait before it lets go of a message
    assert log.backlog == 0
    await log.aclose()
    assert await _texts(log, pg_tenant) == [f"message {n}/0" for n in range(3)]
    await down.dispose()


async def test_migration_keys_rows_written_before_it(tmp_path: Path) -> None:
    """Rows from before revision 0002 (replies of one event, and a row written twice) get distinct keys."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = db.make_engine(url)

    def upgrade(target: str) -> Callable[[Connection], None]:
        def run(sync: Connection) -> None:
            from alembic import command

            command.upgrade(db.alembic_config(sync), target)

        return run

    async with engine.begin() as conn:
        await conn.run_sync(upgrade("0001"))
        old = text(  # the 0001 schema has no seq column
            "INSERT INTO messages (tenant, conversation, channel, direction, at, event_id) "
            "VALUES ('t', 'web:1', 'web', :direction, '2026-11-23 09:00:00', 'e1')"
        )
        await conn.execute(old, [{"direction": d} for d in ("in", "in", "out", "out")])
    async with engine.begin() as conn:
        await conn.run_sync(upgrade("head"))
        seqs = (await conn.execute(text("SELECT direction, seq FROM messages ORDER BY id"))).all()
        assert [tuple(s) for s in seqs] == [("in", 0), ("in", 1), ("out", 0), ("out", 1)]
    await engine.dispose()
