"""The LLM inside the dialog: the shipped config with its LLM pointed at the OpenAI double, on the real services.

Every replay fixture still passes with paraphrasing (and extraction) on; the customer's words never reach a
paraphrase prompt; the LLM reads slots only in messages the rules did not understand, and only valid values stay.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from doubles.openai import PREFIX, OpenAIDouble

from bot import keys
from bot.config import load_config
from bot.devtools.replay import Replayer
from bot.pipeline import Pipeline
from bot.runtime import Runtime, Tenant
from channels.base import InboundMessage
from llm.provider import close_clients

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = sorted((ROOT / "fixtures" / "conversations").rglob("*.yaml"))
NOW = datetime.fromisoformat("2026-11-23T09:00:00+00:00")


@pytest.fixture(scope="module")
async def double() -> AsyncIterator[OpenAIDouble]:
    async with OpenAIDouble("sk-test") as d:
        yield d


@pytest.fixture(scope="module")
async def runtime(services_env: dict[str, str], double: OpenAIDouble) -> AsyncIterator[Runtime]:
    env = {**services_env, "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": double.base_url}
    rt = await Runtime.start(load_config(ROOT / "config.yaml", env=env))
    yield rt
    await rt.aclose()
    await close_clients()


@pytest.fixture
async def demo(runtime: Runtime, double: OpenAIDouble) -> AsyncIterator[Tenant]:
    """A fresh alias of the demo tenant (empty calendar, cache and budgets), purged afterwards."""
    double.reset()
    tenant = runtime.add_tenant(f"demo~{uuid.uuid4().hex[:8]}", runtime.tenant("demo").config)
    yield tenant
    await runtime.drop_tenant(tenant.id)


async def _say(runtime: Runtime, tenant: Tenant, user: str, texts: list[str]) -> list[list[str]]:
    pipeline = Pipeline(runtime)
    said: list[list[str]] = []
    for number, text in enumerate(texts):
        msg = InboundMessage(tenant=tenant.id, channel="telegram", user_id=user, event_id=f"{user}-{number}", text=text)
        said.append([r.text for r in (await pipeline.handle(msg, NOW)).replies])
    return said


async def _forget_paraphrases(runtime: Runtime) -> None:
    for tenant in ("demo", "demo-ru"):  # replay aliases share their tenant's cache
        async for key in runtime.redis.scan_iter(match=keys.paraphrase(tenant, "*")):
            await runtime.redis.delete(key)


async def test_replay_fixtures_pass_with_paraphrasing_on(runtime: Runtime, double: OpenAIDouble) -> None:
    double.reset()
    await _forget_paraphrases(runtime)
    assert runtime.tenant("demo").assistant is not None and runtime.tenant("demo-ru").assistant is not None
    replayer = Replayer(runtime)
    failures: list[str] = []
    paraphrased = 0
    for path in FIXTURES:
        result = await replayer.run(path)
        failures += [f"{path.name}: {f}" for f in result.failures]
        paraphrased += sum(r.startswith(tuple(PREFIX.values())) for o in result.observed for r in o.replies)
    assert not failures, "\n".join(failures)
    assert paraphrased > 100  # the fixtures really ran on paraphrased replies, in both languages
    prompts = [b["messages"] for b in double.completions() if "response_format" not in b]
    assert any("Russian" in m[0]["content"] for m in prompts) and any("English" in m[0]["content"] for m in prompts)
    await _forget_paraphrases(runtime)


async def test_customer_words_never_enter_a_paraphrase_prompt(
    runtime: Runtime, demo: Tenant, double: OpenAIDouble
) -> None:
    said = await _say(runtime, demo, "u1", ["hi there, my dog Zanzibar says hello", "haircut tomorrow at 5pm"])
    assert said[1][0].startswith(PREFIX["en"]) and "17:00" in said[1][0]
    for body in double.completions():
        if "response_format" not in body:
            assert all("Zanzibar" not in m["content"] and "5pm" not in m["content"] for m in body["messages"])


async def test_llm_reads_slots_the_rules_missed_and_invalid_values_are_ignored(
    runtime: Runtime, demo: Tenant, double: OpenAIDouble
) -> None:
    double.answer("the usual thing my sister had", service="manicure", date="2026-11-25", time="25:99", name="x1")
    double.answer("the usual thing my sister had", phone="not a phone")
    await _say(runtime, demo, "u2", ["hi", "the usual thing my sister had, on her favourite weekday"])
    session = await runtime.sessions.load(demo.id, "telegram:u2")
    assert session is not None
    assert session.slots == {"service": "manicure", "date": "2026-11-25"}  # time, name and phone did not parse
    asked = [b for b in double.completions() if "response_format" in b]
    assert len(asked) == 1
    schema = asked[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["service"]["enum"] == ["haircut", "manicure", "colouring", None]
    assert asked[0]["messages"][1]["content"] == "the usual thing my sister had, on her favourite weekday"


async def test_rules_stay_first(runtime: Runtime, demo: Tenant, double: OpenAIDouble) -> None:
    double.answer("haircut", service="colouring")  # would be wrong: never asked, the rules understood it
    await _say(runtime, demo, "u3", ["hi", "haircut tomorrow", "yes", "cancel"])
    assert not [b for b in double.completions() if "response_format" in b]
    session = await runtime.sessions.load(demo.id, "telegram:u3")
    assert session is not None and session.slots.get("service") != "colouring"


async def test_spent_budget_gets_templates_and_no_calls(runtime: Runtime, demo: Tenant, double: OpenAIDouble) -> None:
    assistant = demo.assistant
    assert assistant is not None
    budget = assistant.budgets("telegram:u4")[0]
    await runtime.redis.hset(budget.key, mapping={"used": budget.limit or 0})  # type: ignore[misc]
    said = await _say(runtime, demo, "u4", ["hi", "something odd", "haircut tomorrow at 5pm"])
    assert double.calls == []
    assert not any(text.startswith(PREFIX["en"]) for turn in said for text in turn)
    assert "17:00" in said[2][0]
