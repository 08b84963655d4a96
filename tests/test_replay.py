"""Every conversation fixture replays green through the real pipeline (real Redis + PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.config import load_config
from bot.devtools.replay import Replayer, load_fixture
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


async def test_exported_voice_turns_replay_from_their_transcript(runtime: Runtime, tmp_path: Path) -> None:
    """An exported fixture's voice turn names the provider's media id (no file here) and what was heard."""
    path = tmp_path / "exported.yaml"
    path.write_text(
        'tenant: demo\nchannel: telegram\nnow: "2026-11-23T09:00:00+00:00"\nturns:\n'
        '  - voice: AwACAgIAAxkBAAIBY2Vo\n    heard: "haircut tomorrow at 5pm"\n    expect: {state: ask_name}\n'
        "  - voice: no/such/file.ogg\n"
    )
    result = await Replayer(runtime).run(path)
    assert result.failures == ["turn 2: voice file 'no/such/file.ogg' not found from "
                               f"{tmp_path} (and no heard: transcript)"]  # fmt: skip


async def test_voice_echo_says_what_was_heard(services_env: dict[str, str], tmp_path: Path) -> None:
    settings = load_config(ROOT / "config.yaml", env=services_env)
    echoing = settings.model_copy(update={"voice": settings.voice.model_copy(update={"echo": True})})
    rt = await Runtime.start(echoing)
    try:
        path = tmp_path / "echo.yaml"
        path.write_text(
            'tenant: demo\nnow: "2026-11-23T09:00:00+00:00"\nturns:\n'
            '  - voice: x.ogg\n    heard: "haircut tomorrow at 5pm"\n'
            '    expect: {reply_key: voice_echo, reply_contains: ["I heard: haircut tomorrow at 5pm"]}\n'
            '  - user: "John"\n    expect: {state: ask_phone}\n'
        )
        result = await Replayer(rt).run(path)
        assert result.passed, result.failures
        assert result.observed[0].reply_keys[0] == "voice_echo" and "voice_echo" not in result.observed[1].reply_keys
    finally:
        await rt.aclose()
