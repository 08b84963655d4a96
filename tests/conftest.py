"""Shared fixtures. The suite talks to the real Redis and PostgreSQL on loopback (started by .ci/run)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """A client of the real Redis."""
    from bot import redis as redis_conn

    client = await redis_conn.connect(REDIS_URL, "unused")
    yield client
    await redis_conn.close(client)


@pytest.fixture
async def tenant(redis: Redis, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A tenant id of this test alone; every Redis key of it is deleted afterwards."""
    from bot import keys

    tenant = f"{request.module.__name__.rpartition('.')[2]}-{uuid4().hex[:12]}".replace("_", "-")
    yield tenant
    async for key in redis.scan_iter(match=keys.tenant_pattern(tenant)):
        await redis.delete(key)


@pytest.fixture(scope="session")
def services_env() -> dict[str, str]:
    """Environment that points a config's ``${REDIS_URL}`` / ``${DATABASE_URL}`` at the real services."""
    return {"REDIS_URL": REDIS_URL, "DATABASE_URL": DATABASE_URL}


# --- SQL storage (bot.db, bot.tables): the real PostgreSQL `test` database, and scratch SQLite files ----------


@pytest.fixture(scope="session")
async def pg_engine() -> AsyncIterator[AsyncEngine]:
    """An engine on the migrated PostgreSQL test database, with room for 25 concurrent connections."""
    from bot import db

    await db.migrate(DATABASE_URL)
    engine = db.make_engine(DATABASE_URL, pool_size=25)
    yield engine
    await engine.dispose()


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An engine on a freshly migrated SQLite file (embedded mode), gone with the test's tmp dir."""
    from bot import db

    url = f"sqlite+aiosqlite:///{tmp_path / 'bookingbot.db'}"
    await db.migrate(url)
    engine = db.make_engine(url)
    yield engine
    await engine.dispose()
