"""Done-when of the LLM issue, as a user runs it: piped ``bookingbot chat`` subprocesses with the LLM pointed at
the OpenAI double, on the real Redis and PostgreSQL, then ``bookingbot usage``."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from doubles.openai import PREFIX, OpenAIDouble
from redis.asyncio import Redis
from ruamel.yaml import YAML
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import keys, tables
from llm.provider import close_clients

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = b"hi\nhaircut tomorrow at 5pm\nJohn\n+447700900123\nyes\n"


@pytest.fixture
async def double() -> AsyncIterator[OpenAIDouble]:
    async with OpenAIDouble("sk-test") as d:
        yield d
    await close_clients()


@pytest.fixture
async def shops(tmp_path: Path, redis: Redis, pg_engine: AsyncEngine) -> AsyncIterator[tuple[Path, str, str]]:
    """A config with two copies of the demo tenant: one with the shipped budgets, one whose budget is spent."""
    yaml = YAML()
    doc: Any = yaml.load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    shop, spent = f"shop-{uuid.uuid4().hex[:8]}", f"spent-{uuid.uuid4().hex[:8]}"
    demo = doc["tenants"]["demo"]
    doc["tenants"] = {shop: demo, spent: yaml.load(_dump(yaml, demo))}
    doc["tenants"][spent]["llm"]["budget"]["daily_tokens"] = 0
    path = tmp_path / "config.yaml"
    with path.open("w", encoding="utf-8") as out:
        yaml.dump(doc, out)
    yield path, shop, spent
    for tenant in (shop, spent):
        async for key in redis.scan_iter(match=keys.tenant_pattern(tenant)):
            await redis.delete(key)
        async with pg_engine.begin() as conn:
            for table in tables.TENANT_TABLES:
                await conn.execute(delete(table).where(table.c.tenant == tenant))


def _dump(yaml: YAML, node: Any) -> str:
    from io import StringIO

    buffer = StringIO()
    yaml.dump(node, buffer)
    return buffer.getvalue()


async def _chat(config: Path, tenant: str, env: dict[str, str]) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "chat", "--config", str(config), "--tenant", tenant,
        "--now", "2026-11-23T09:00:00+00:00",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(SCRIPT), timeout=300)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_piped_chat_books_with_paraphrases_and_a_spent_budget_gets_templates(
    double: OpenAIDouble,
    shops: tuple[Path, str, str],
    services_env: dict[str, str],
) -> None:
    config, shop, spent = shops
    env = {**os.environ, **services_env, "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": double.base_url}
    # both conversations at once: two processes start in the time of one on a loaded machine
    talked, frugal = await asyncio.gather(_chat(config, shop, env), _chat(config, spent, env))

    booked = talked.split("> yes", 1)[1]
    assert "17:00" in booked and "John" in booked
    assert talked.count(PREFIX["en"]) >= 4  # greeting, questions and the booking itself, in the tenant's voice
    assert PREFIX["en"] not in frugal and "17:00" in frugal.split("> yes", 1)[1]  # templates, and still booked
    asked = double.completions()
    assert asked and all(b["messages"][0]["content"].startswith("You rewrite") for b in asked)
    assert len(asked) == talked.count(PREFIX["en"])  # every call came from the shop; none from the spent tenant

    report = await _usage(config, shop, env)
    total = report.splitlines()[-1].split()
    assert "paraphrase" in report and "gpt-4o-mini" in report
    assert total[0] == "total" and int(total[1]) == len(asked) and int(total[-1]) == double.billed
    assert (await _usage(config, spent, env)).splitlines()[-1].split()[-1] == "0"


async def _usage(config: Path, tenant: str, env: dict[str, str]) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "usage", "--config", str(config), "--tenant", tenant,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=300)
    assert process.returncode == 0, err.decode()
    return out.decode()
