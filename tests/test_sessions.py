"""Session store on the real Redis: versioned saves, TTL, races, unreadable values; and the embedded Redis."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from bot import keys
from bot import redis as redis_conn
from bot.exceptions import ConcurrentUpdate
from bot.sessions import SessionStore
from dialogs.exceptions import SessionError
from dialogs.session import Session

ROOT = Path(__file__).resolve().parent.parent
TTL = 3600


@pytest.fixture
def store(redis: Redis) -> SessionStore:
    return SessionStore(redis, ttl_seconds=TTL)


def new_session(tenant: str, conversation: str = "telegram:42") -> Session:
    return Session(tenant=tenant, conversation=conversation, customer=conversation)


async def test_roundtrip_bumps_version(store: SessionStore, tenant: str) -> None:
    assert await store.load(tenant, "telegram:42") is None
    session = new_session(tenant)
    session.slots["service"] = "haircut"
    await store.save(session)
    assert session.version == 1

    loaded = await store.load(tenant, "telegram:42")
    assert loaded == session
    assert loaded is not None
    loaded.state = "ask_date"
    await store.save(loaded)
    again = await store.load(tenant, "telegram:42")
    assert again is not None
    assert (again.version, again.state, again.slots) == (2, "ask_date", {"service": "haircut"})


async def test_save_sets_ttl(store: SessionStore, redis: Redis, tenant: str) -> None:
    session = new_session(tenant)
    await store.save(session)
    key = keys.session(tenant, session.conversation)
    await redis.pexpire(key, 5_000)
    await store.save(session)  # every save refreshes the TTL
    assert TTL * 1000 - 2_000 < await redis.pttl(key) <= TTL * 1000


async def test_stale_save_raises_concurrent_update(store: SessionStore, tenant: str) -> None:
    await store.save(new_session(tenant))
    first = await store.load(tenant, "telegram:42")
    second = await store.load(tenant, "telegram:42")
    assert first is not None and second is not None
    first.state, second.state = "first", "second"
    await store.save(first)
    with pytest.raises(ConcurrentUpdate):
        await store.save(second)
    assert second.version == 1  # unchanged: the caller reloads and redoes its turn
    stored = await store.load(tenant, "telegram:42")
    assert stored is not None
    assert (stored.state, stored.version) == ("first", 2)


async def test_racing_creates_one_wins(store: SessionStore, tenant: str) -> None:
    for n in range(20):
        conversation = f"web:{n}"
        a, b = new_session(tenant, conversation), new_session(tenant, conversation)
        a.state, b.state = "a", "b"
        results = await asyncio.gather(store.save(a), store.save(b), return_exceptions=True)
        winners = [s for s, r in zip((a, b), results, strict=True) if r is None]
        assert len(winners) == 1
        assert isinstance(next(r for r in results if r is not None), ConcurrentUpdate)
        stored = await store.load(tenant, conversation)
        assert stored is not None
        assert (stored.state, stored.version) == (winners[0].state, 1)


async def test_save_of_new_session_over_existing_fails(store: SessionStore, tenant: str) -> None:
    await store.save(new_session(tenant))
    with pytest.raises(ConcurrentUpdate):
        await store.save(new_session(tenant))


@pytest.mark.parametrize(
    "raw",
    [
        "not json {",
        '{"tenant": "x"}',
        '{"schema_version": 99, "tenant": "x", "conversation": "telegram:42", "customer": "c"}',
    ],
)
async def test_unreadable_value_raises_session_error(
    store: SessionStore, redis: Redis, tenant: str, raw: str
) -> None:
    await redis.set(keys.session(tenant, "telegram:42"), raw)
    with pytest.raises(SessionError, match="telegram:42"):
        await store.load(tenant, "telegram:42")


async def test_session_of_another_conversation_is_rejected(
    store: SessionStore, redis: Redis, tenant: str
) -> None:
    await redis.set(keys.session(tenant, "telegram:42"), new_session(tenant, "telegram:7").to_json())
    with pytest.raises(SessionError, match="telegram:7"):
        await store.load(tenant, "telegram:42")


async def test_save_over_garbage_raises_session_error(store: SessionStore, redis: Redis, tenant: str) -> None:
    await redis.set(keys.session(tenant, "telegram:42"), "[1, 2]")
    with pytest.raises(SessionError):
        await store.save(new_session(tenant))


async def test_delete(store: SessionStore, tenant: str) -> None:
    await store.save(new_session(tenant))
    await store.delete(tenant, "telegram:42")
    assert await store.load(tenant, "telegram:42") is None
    await store.save(new_session(tenant))  # a fresh session may be created again


def test_nonpositive_ttl_is_refused(redis: Redis) -> None:
    with pytest.raises(ValueError, match="TTL"):
        SessionStore(redis, ttl_seconds=0)


async def test_embedded_redis_is_shared_by_processes_and_stopped_by_last_close(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "var")
    client = await redis_conn.connect(None, data_dir)
    socket = Path(client.connection_pool.connection_kwargs["path"])
    pid = int((await client.info("server"))["process_id"])
    try:
        await SessionStore(client, TTL).save(new_session("demo"))
        other = await asyncio.create_subprocess_exec(
            *[sys.executable, "-c", _READ_SESSION_VERSION, data_dir],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(other.communicate(), timeout=180)  # a deadline for a loaded machine
        assert other.returncode == 0
        assert out.decode().split() == [str(pid), "1"]  # same server, same data
        assert await client.ping()  # the other process's close left the server running for us
    finally:
        await redis_conn.close(client)
    with pytest.raises(RedisConnectionError):
        await Redis(unix_socket_path=str(socket)).ping()
    assert (tmp_path / "var" / redis_conn.DB_FILE).stat().st_size > 0  # saved on shutdown


_READ_SESSION_VERSION = """
import asyncio, sys
from bot import redis as redis_conn
from bot.sessions import SessionStore

async def main():
    client = await redis_conn.connect(None, sys.argv[1])
    session = await SessionStore(client, 60).load("demo", "telegram:42")
    print((await client.info("server"))["process_id"], session.version)
    await redis_conn.close(client)

asyncio.run(main())
"""
