"""Every conversation fixture also replays green with its tenant on ``backend: calcom``, against the double.

One double per demo tenant (London, Moscow), set before each fixture to the fixture's clock and ``calendar:``
state, and emptied between fixtures (cal.com has no tenant aliases: its calendar is the account's).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from calcom_setup import API_KEY, EVENT_TYPES, MINUTES, calcom_env, write_config
from contract import problems
from doubles.calcom import CalcomDouble
from test_replay import FIXTURES

from bot.config import load_config
from bot.devtools.replay import Fixture, Replayer, local_time
from bot.runtime import Runtime, Tenant

TIMEZONES = {"demo": "Europe/London", "demo-ru": "Europe/Moscow"}


class Doubles:
    def __init__(self) -> None:
        minutes = {EVENT_TYPES[s]: MINUTES[s] for s in EVENT_TYPES}
        self.by_tenant = {t: CalcomDouble(API_KEY, minutes, timezone=tz) for t, tz in TIMEZONES.items()}

    async def setup(self, fixture: Fixture, tenant: Tenant) -> None:
        double = self.by_tenant[fixture.tenant]
        self.check_contract(double)
        double.reset()
        double.now = lambda: fixture.now
        for busy in fixture.calendar.busy:
            double.block(local_time(busy.start, tenant), busy.minutes)


    @staticmethod
    def check_contract(double: CalcomDouble) -> None:
        """Every request the previous fixture sent follows the published spec."""
        wrong = [p for r in double.requests for p in problems(r.method, r.path, r.query, r.headers, r.body or None)]
        assert wrong == [], wrong


@pytest.fixture(scope="module")
async def doubles() -> AsyncIterator[Doubles]:
    d = Doubles()
    for double in d.by_tenant.values():
        await double.start()
    yield d
    for double in d.by_tenant.values():
        d.check_contract(double)
        await double.stop()


@pytest.fixture(scope="module")
async def runtime(
    doubles: Doubles, services_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Runtime]:
    bases = {tenant: double.url for tenant, double in doubles.by_tenant.items()}
    config = write_config(tmp_path_factory.mktemp("calcom-replay") / "config.yaml", bases)
    rt = await Runtime.start(load_config(config, env=calcom_env(services_env)))
    yield rt
    await rt.aclose()


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_fixture_against_calcom(runtime: Runtime, doubles: Doubles, path: Path) -> None:
    result = await Replayer(runtime, calendar_setup=doubles.setup).run(path)
    assert result.passed, "\n".join(result.failures)
    assert runtime.tenants["demo"].config.booking.backend == "calcom"
