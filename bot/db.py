"""SQL storage: async engines for PostgreSQL (asyncpg) and SQLite (aiosqlite), and Alembic migrations.

Production runs on PostgreSQL; embedded mode on a SQLite file. Both are reached through one
:class:`~sqlalchemy.ext.asyncio.AsyncEngine`, and every module writes portable SQL against it; the few
dialect-specific statements (upserts) go through :func:`dialect_insert`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bot.exceptions import StorageError

_ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
# Key of the PostgreSQL advisory lock that lets one process at a time run migrations ("bbmigr").
_MIGRATION_LOCK = 0x62_62_6D_69_67_72
# WAL lets readers run beside the writer; busy_timeout makes a second writer wait instead of failing at once.
_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
)


def async_url(url: str) -> URL:
    """``url`` with the async driver of its database; only PostgreSQL and SQLite are supported."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StorageError(f"invalid database URL {url!r}: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg")
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    shown = parsed.render_as_string(hide_password=True)
    raise StorageError(f"unsupported database URL {shown!r}: use postgresql://... or sqlite:///path")


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An engine for ``url`` (``postgresql://``, ``postgresql+asyncpg://``, ``sqlite:///``, ``sqlite+aiosqlite:///``)."""
    target = async_url(url)
    if target.get_backend_name() == "postgresql":
        # No pre-ping: it costs a round trip per checkout on the hot path; a dropped connection surfaces as a
        # disconnect error, SQLAlchemy invalidates the pool, and the job that hit it is retried.
        return create_async_engine(target, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)
    if target.database and target.database != ":memory:" and not target.database.startswith("file:"):
        Path(target.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(target)
    _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    """Pragmas on every new connection, and real transactions that take the write lock at BEGIN.

    The sqlite3 driver's own transaction handling skips BEGIN before SELECTs; a transaction that reads and then
    writes could then fail with SQLITE_BUSY instead of waiting. ``BEGIN IMMEDIATE`` serialises writers up front.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def dialect_insert(conn: AsyncConnection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that supports ``on_conflict_do_nothing`` / ``on_conflict_do_update`` on ``conn``'s database."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's config for our migrations, usable from any working directory and from an installed package.

    With ``connection``, migrations run on it (inside the caller's transaction) instead of opening their own.
    """
    config = Config(str(_ALEMBIC_INI))
    config.attributes["connection"] = connection
    return config


async def migrate(url: str) -> None:
    """Bring the database at ``url`` to the latest schema. Safe on every start, from many processes at once."""
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Held until commit: a second process waits here, then finds nothing left to do.
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            await conn.run_sync(_upgrade)
    finally:
        await engine.dispose()


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")
