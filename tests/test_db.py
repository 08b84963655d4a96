"""SQL storage: engine URLs, migrations (PostgreSQL and SQLite) and the batched message log."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, delete, func, insert, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import SQLModel, col

from bot import db
from bot.exceptions import StorageError
from bot.messagelog import LoggedMessage, MessageLog
from bot.tables import Conversation, Customer, Message

# Every table bot/tables.py declares must exist after migrating, at the newest revision (several issues add both).
TABLES = set(SQLModel.metadata.tables) | {"alembic_version"}
BOT_DIR = Path(db.__file__).resolve().parent
HEAD = ScriptDirectory.from_config(db.alembic_config()).get_current_head()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://postgres@127.0.0.1:5432/test", "postgresql+asyncpg"),
        ("postgres://u:p@db/x", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@db/x", "postgresql+asyncpg"),
        ("postgresql+psycopg2://u@db/x", "postgresql+asyncpg"),
        ("sqlite:///./var/bookingbot.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:////abs/bookingbot.db", "sqlite+aiosqlite"),
    ],
)
def test_urls_get_async_drivers(url: str, driver: str) -> None:
    normalised = db.async_url(url)
    assert normalised.drivername == driver
    assert normalised.database == make_url(url).database


@pytest.mark.parametrize("url", ["mysql://u:secret@db/x", "not a url", ""])
def test_bad_urls_are_clear_errors(url: str) -> None:
    with pytest.raises(StorageError) as info:
        db.async_url(url)
    assert "secret" not in str(info.value)


# -- migrations --------------------------------------------------------------------------------------------------


@pytest.fixture
async def scratch_pg_url(services_env: dict[str, str]) -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database next to the test one, dropped afterwards."""
    name = f"bbtest_{uuid.uuid4().hex[:12]}"
    test_url = services_env["DATABASE_URL"]
    admin = db.make_engine(test_url, pool_size=1)
    async with admin.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(test_url).set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def _tables(url: str) -> tuple[set[str], str | None]:
    engine = db.make_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
            version = await conn.scalar(text("SELECT version_num FROM alembic_version")) if names else None
            return names, version
    finally:
        await engine.dispose()


async def test_postgres_migrations_are_idempotent_and_concurrent(scratch_pg_url: str) -> None:
    await asyncio.gather(*(db.migrate(scratch_pg_url) for _ in range(3)))  # advisory lock: one at a time
    await db.migrate(scratch_pg_url)
    assert await _tables(scratch_pg_url) == (TABLES, HEAD)


async def test_postgres_downgrade_and_upgrade_again(scratch_pg_url: str) -> None:
    await db.migrate(scratch_pg_url)
    engine = db.make_engine(scratch_pg_url, pool_size=1)

    def downgrade(sync: Connection) -> None:
        command.downgrade(db.alembic_config(sync), "base")

    async with engine.begin() as conn:
        await conn.run_sync(downgrade)
    await engine.dispose()
    assert (await _tables(scratch_pg_url))[0] == {"alembic_version"}
    await db.migrate(scratch_pg_url)
    assert await _tables(scratch_pg_url) == (TABLES, HEAD)


async def test_sqlite_migrations_and_pragmas(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'bookingbot.db'}"  # the directory is created on demand
    await db.migrate(url)
    await db.migrate(url)
    assert await _tables(url) == (TABLES, HEAD)
    engine = db.make_engine(url)
    async with engine.connect() as conn:
        assert await conn.scalar(text("PRAGMA journal_mode")) == "wal"
        assert await conn.scalar(text("PRAGMA foreign_keys")) == 1
        assert await conn.scalar(text("PRAGMA busy_timeout")) == 10000
    await engine.dispose()


def test_alembic_by_hand_from_any_directory(tmp_path: Path) -> None:
    target = tmp_path / "by-hand.db"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{target}"}
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(BOT_DIR / "alembic.ini"), "upgrade", "head"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert asyncio.run(_tables(f"sqlite:///{target}")) == (TABLES, HEAD)


async def test_times_come_back_aware_utc(sqlite_engine: AsyncEngine) -> None:
    moscow = timezone(timedelta(hours=3))
    sent = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=moscow)
    row = {"tenant": "t", "conversation": "web:1", "channel": "web", "direction": "in", "at": sent}
    async with sqlite_engine.begin() as conn:
        await conn.execute(insert(Message), row)
        stored = await conn.scalar(select(col(Message.at)))
    assert stored == sent and stored.tzinfo == UTC
    with pytest.raises(Exception, match="naive datetime"):
        async with sqlite_engine.begin() as conn:
            await conn.execute(insert(Message), {**row, "at": datetime(2026, 11, 23)})


# -- message log -------------------------------------------------------------------------------------------------


def message(
    tenant: str, n: int, *, conversation: str = "telegram:42", direction: Literal["in", "out"] = "in"
) -> LoggedMessage:
    return LoggedMessage(
        tenant=tenant,
        conversation=conversation,
        channel=conversation.partition(":")[0],
        direction=direction,
        at=datetime(2026, 11, 23, 9, 0, tzinfo=UTC) + timedelta(seconds=n),
        text=f"message {n}",
        state=f"state{n}",
        event_id=f"e{n}",
    )


@pytest.fixture
async def tenant(pg_engine: AsyncEngine) -> AsyncIterator[str]:
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    async with pg_engine.begin() as conn:
        for table in (Message, Conversation, Customer):
            await conn.execute(delete(table).where(col(table.tenant) == name))


async def _count(engine: AsyncEngine, tenant: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).where(col(Message.tenant) == tenant)) or 0)


async def test_log_round_trip_in_order(pg_engine: AsyncEngine, tenant: str) -> None:
    log = MessageLog(pg_engine)
    rows = [message(tenant, n, direction="in" if n % 2 else "out") for n in range(5)]
    rows.append(LoggedMessage(**{**rows[0].model_dump(), "seq": 1, "button": "slot:17:00", "phone": "+447700900123"}))
    for row in rows:
        log.add(row)
    log.add(message(tenant, 99, conversation="telegram:other"))
    await log.flush()
    assert await log.conversation(tenant, "telegram:42") == rows
    assert await log.conversation(tenant, "telegram:nobody") == []
    await log.aclose()


async def test_background_writer_batches_and_close_flushes_everything(pg_engine: AsyncEngine, tenant: str) -> None:
    log = MessageLog(pg_engine, batch_size=100, interval=0.05)
    await log.start()
    log.add(message(tenant, 0))
    for _ in range(100):  # written within the interval, without a flush
        if await _count(pg_engine, tenant) == 1:
            break
        await asyncio.sleep(0.02)
    assert await _count(pg_engine, tenant) == 1
    for n in range(1, 251):
        log.add(message(tenant, n))
    await log.aclose()
    assert [r.text for r in await log.conversation(tenant, "telegram:42")] == [f"message {n}" for n in range(251)]
    with pytest.raises(StorageError, match="closed"):
        log.add(message(tenant, 999))


async def test_log_keeps_customers_and_conversations(pg_engine: AsyncEngine, tenant: str) -> None:
    log = MessageLog(pg_engine)
    log.add(message(tenant, 10))
    log.add(message(tenant, 5))
    await log.flush()
    log.add(message(tenant, 30))
    log.add(message(tenant, 20))
    await log.flush()  # 20 s later: last_at is touched at most once a minute, so it stays at 10 s
    async with pg_engine.connect() as conn:
        first = (await conn.execute(select(Conversation).where(col(Conversation.tenant) == tenant))).one()
    assert first.last_at == datetime(2026, 11, 23, 9, 0, 10, tzinfo=UTC)
    log.add(message(tenant, 75))
    await log.flush()  # a minute on: moved forward
    await log.record_customer(tenant, "telegram:42", "telegram", name="John")
    await log.record_customer(tenant, "telegram:42", "telegram", phone="+447700900123")
    async with pg_engine.connect() as conn:
        conversation = (await conn.execute(select(Conversation).where(col(Conversation.tenant) == tenant))).one()
        customer = (await conn.execute(select(Customer).where(col(Customer.tenant) == tenant))).one()
    start = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    assert (conversation.id, conversation.customer, conversation.channel) == ("telegram:42", "telegram:42", "telegram")
    assert conversation.started_at == start + timedelta(seconds=5)
    assert conversation.last_at == start + timedelta(seconds=75)
    assert (customer.user_id, customer.name, customer.phone, customer.email) == ("42", "John", "+447700900123", None)
    await log.aclose()


async def test_a_failed_write_loses_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'late.db'}"
    engine = db.make_engine(url)  # not migrated yet: the messages table does not exist
    log = MessageLog(engine, batch_size=3)
    for n in range(7):
        log.add(message("t", n))
    with pytest.raises(StorageError, match="cannot write"):
        await log.flush()
    await db.migrate(url)
    await log.aclose()
    assert [r.text for r in await log.conversation("t", "telegram:42")] == [f"message {n}" for n in range(7)]
    await engine.dispose()
