"""Alembic environment for bookingbot.

The application calls :func:`bot.db.migrate`, which hands over an open connection (inside a transaction holding
the migration lock). By hand, ``alembic -c bot/alembic.ini upgrade head`` migrates ``$DATABASE_URL``.
Migrations are written by hand against ``op`` and must run on both PostgreSQL and SQLite.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

from bot import tables  # noqa: F401  (fills SQLModel.metadata, for `alembic revision --autogenerate`)
from bot.db import make_engine


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite can only ALTER by copying the table
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_standalone(url: str) -> None:
    engine = make_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run_migrations)
    finally:
        await engine.dispose()


def main() -> None:
    shared = context.config.attributes.get("connection")
    if shared is not None:
        run_migrations(shared)
        return
    if context.config.config_file_name is not None:
        fileConfig(context.config.config_file_name)
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("set DATABASE_URL (or pass -x url=...) to run migrations by hand")
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported; run them against a database")
    asyncio.run(run_standalone(url))


main()
