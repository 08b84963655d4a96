"""Every conversation fixture replays green through the real pipeline (real Redis + PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.config import load_config
from bot.replay import Replayer, load_fixture
from bot.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = sorted((ROOT / "fixtures" / "conversations").rglob("*.yaml"))


@pytest.fixture(scope="module")
async def runtime(services_env: dict[str, str]) -> AsyncIterator[Runtime]:
    rt = await Runtime.start(load_config(ROOT / "config.yaml", env=services_env))
    yield rt
    await rt.aclose()


def test_enough_fixtures_in_both_locales() -> None:
    tenants = [load_fixture(p).tenant for p in FIXTURES]
    assert len(FIXTURES) >= 25
    assert tenants.count("demo") >= 10 and tenants.count("demo-ru") >= 8


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_fixture(runtime: Runtime, path: Path) -> None:
    result = await Replayer(runtime).run(path)
    if result.verdict == "pending":
        pytest.xfail(f"pending: {result.pending}")
    assert result.verdict != "fixed", "it passes now: remove its `pending:`"
    assert result.passed, "\n".join(result.failures)


async def test_broken_expectation_fails(runtime: Runtime, tmp_path: Path) -> None:
    """The runner itself can fail: a wrong state, a missing reply text and a phantom booking are all reported."""
    path = tmp_path / "wrong.yaml"
    path.write_text(
        'tenant: demo\nnow: "2026-11-23T09:00:00+00:00"\n'
        "turns:\n"
        '  - user: "haircut"\n'
        '    expect: {state: booked, reply_contains: ["no such words"]}\n'
        "expect_end:\n"
        '  bookings: [{service: haircut, start: "2026-11-24T17:00"}]\n'
    )
    result = await Replayer(runtime).run(path)
    assert len(result.failures) == 3, result.failures


async def test_unknown_button_is_a_failure_not_a_crash(runtime: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "press.yaml"
    path.write_text('tenant: demo\nnow: "2026-11-23T09:00:00+00:00"\nturns:\n  - user: "hi"\n  - press: "Nope"\n')
    result = await Replayer(runtime).run(path)
    assert any("no such button" in f for f in result.failures)
