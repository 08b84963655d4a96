"""``bookingbot poll``: Telegram getUpdates and VK Bots Long Poll against the doubles, through the real ingest,
dedupe and drains.

The Telegram test is the README's path from a fresh clone: a real ``bookingbot poll`` process in embedded
mode (no REDIS_URL / DATABASE_URL), the token in ``./.env``; it deletes the webhook, answers, drops a
redelivered update, and stops on SIGTERM with its embedded Redis.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _stack import ROOT, A, fixture
from ruamel.yaml import YAML

from bot.config import load_config
from bot.poll import poll
from channels.settings import VKSettings
from tests.doubles.telegram import TelegramDouble
from tests.doubles.vk import VKDouble

DEADLINE = 180.0  # a loaded machine: generous, and only ever waited for a condition


async def until(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def tg_text(user: int, text: str) -> dict[str, Any]:
    update = copy.deepcopy(fixture("telegram", "text"))
    update.pop("update_id")
    message = update["message"]
    message["from"]["id"] = message["chat"]["id"] = user
    message["text"] = text
    return update


def _config_with(path: Path, channels: dict[str, Any]) -> None:
    yaml = YAML()
    doc = yaml.load((ROOT / "config.yaml").read_text())
    doc["tenants"]["demo"]["channels"] = channels
    with path.open("w") as out:
        yaml.dump(doc, out)


async def _read_until(stream: asyncio.StreamReader, text: str, seen: list[str]) -> None:
    while not any(text in line for line in seen):
        line = await asyncio.wait_for(stream.readline(), DEADLINE)
        assert line, f"output ended before {text!r}: {seen}"
        seen.append(line.decode())


async def test_poll_telegram_from_a_fresh_directory(tmp_path: Path) -> None:
    async with TelegramDouble(A.tg_token) as tg:
        tg.webhooks[A.tg_token] = {"url": "https://bot.example.com/webhooks/telegram/demo"}
        channels = {"telegram": {"token": "${TG_TOKEN}", "webhook_secret": "${TG_SECRET}", "api_base": tg.url}}
        _config_with(tmp_path / "config.yaml", channels)
        (tmp_path / ".env").write_text(f"TG_TOKEN={A.tg_token}\nTG_SECRET=not-used-by-polling\n")
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "BOOKINGBOT_CONFIG")}
        env["BOOKINGBOT_DATA_DIR"] = str(tmp_path / "var")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "poll", "--tenant", "demo",
            cwd=tmp_path, env=env | {"PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        seen: list[str] = []
        try:
            await _read_until(proc.stdout, "polling telegram for tenant demo", seen)
            assert any("deleted the webhook" in line for line in seen), seen
            assert A.tg_token not in tg.webhooks

            first = tg.queue_update(A.tg_token, tg_text(7001, "hi"))
            await until(lambda: any("Which service" in m["text"] for m in tg.sent), "the answer to 'hi'")
            greeted = len(tg.sent)
            tg.queue_update(A.tg_token, {**tg_text(7001, "hi"), "update_id": first})  # redelivered
            tg.queue_update(A.tg_token, tg_text(7001, "haircut tomorrow at 5pm"))
            await until(lambda: any("17:00" in m["text"] for m in tg.sent), "the answer naming 17:00")
            assert all(m["chat_id"] == "7001" for m in tg.sent)
            later = [m["text"] for m in tg.sent[greeted:]]
            assert len(later) == 1 and "17:00" in later[0], later  # the redelivered "hi" was dropped
            assert sum("GetUpdates" in c.method or c.method == "getUpdates" for c in tg.calls) >= 2
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 10 + DEADLINE / 10)
        stderr = (await proc.stderr.read()).decode()
        assert code == 128 + signal.SIGTERM, stderr
        assert "Traceback" not in stderr, stderr
        assert not list((tmp_path / "var").glob("redis.db.settings")), "the embedded Redis was left running"


async def test_the_readme_console_customer_talks_to_a_polling_bot(tmp_path: Path) -> None:
    """The README's offline path: the Telegram double as a customer console in one process, ``bookingbot poll``
    in another; typed lines are the customer's messages and a number presses a button."""
    console = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.doubles.telegram_console", "--token", A.tg_token, "--port", "0",
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert console.stdin is not None and console.stdout is not None and console.stderr is not None
    seen: list[str] = []
    poll_proc: asyncio.subprocess.Process | None = None
    try:
        await _read_until(console.stdout, "Telegram double on", seen)
        url = seen[-1].split()[3].rstrip(":")  # "Telegram double on http://127.0.0.1:PORT: set ..."
        channels = {"telegram": {"token": A.tg_token, "webhook_secret": "s", "api_base": url}}
        _config_with(tmp_path / "config.yaml", channels)
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "BOOKINGBOT_CONFIG")}
        poll_proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "poll", "--tenant", "demo", cwd=tmp_path,
            env=env | {"PYTHONPATH": str(ROOT), "BOOKINGBOT_DATA_DIR": str(tmp_path / "var")},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        console.stdin.write(b"hi\n")
        await _read_until(console.stdout, "Which service", seen)
        buttons = seen[-1] if "[1]" in seen[-1] else await _next_line(console.stdout, seen)
        assert "[1] Haircut" in buttons, seen
        console.stdin.write(b"1\n")  # presses "Haircut"
        await _read_until(console.stdout, "Which day", seen)
        console.stdin.close()  # Ctrl-D
        assert await asyncio.wait_for(console.wait(), DEADLINE) == 0, (await console.stderr.read()).decode()
    finally:
        for proc in (console, poll_proc):
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), DEADLINE)
    assert poll_proc is not None and poll_proc.stderr is not None
    assert "Traceback" not in (await poll_proc.stderr.read()).decode()


async def _next_line(stream: asyncio.StreamReader, seen: list[str]) -> str:
    seen.append((await asyncio.wait_for(stream.readline(), DEADLINE)).decode())
    return seen[-1]


async def test_poll_vk_long_poll_survives_an_expired_key(services_env: dict[str, str]) -> None:
    settings = load_config(ROOT / "config.yaml", env=services_env)
    async with VKDouble(A.vk_group, A.vk_token, A.vk_confirmation) as vk:
        vk_settings = VKSettings(
            group_id=A.vk_group, access_token=A.vk_token, secret=A.vk_secret,
            confirmation=A.vk_confirmation, api_base=f"{vk.url}/method",
        )  # fmt: skip
        demo = settings.tenants["demo"]
        tenant = f"poll-{os.getpid()}-{id(vk)}"
        tenants = {tenant: demo.model_copy(update={"channels": demo.channels.model_copy(update={"vk": vk_settings})})}
        polling = poll(settings.model_copy(update={"tenants": tenants}), tenant, in_process=True, wait_s=2)
        task = asyncio.create_task(polling)
        try:
            await until(lambda: bool(vk.calls_to("longpoll")), "the first long poll")
            assert str(vk.groups[A.vk_group].long_poll.get("enabled")) == "1"
            vk.queue_event(A.vk_group, _vk_text(55501234, "hi"))
            await until(lambda: len(vk.sent) >= 1, "the answer to 'hi'")
            vk.expire_keys()
            vk.queue_event(A.vk_group, _vk_text(55501234, "haircut tomorrow at 5pm"))
            await until(lambda: any("17:00" in m["message"] for m in vk.sent), "the answer after a new key")
            assert len(vk.calls_to("groups.getLongPollServer")) >= 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await _drop(settings, tenant, services_env)


def _vk_text(user: int, text: str) -> dict[str, Any]:
    event = copy.deepcopy(fixture("vk", "text"))
    for key in ("group_id", "event_id"):
        event.pop(key, None)
    message = event["object"]["message"]
    message["from_id"] = message["peer_id"] = user
    message["text"] = text
    return event


async def _drop(settings: Any, tenant: str, env: dict[str, str]) -> None:
    from bot.runtime import Runtime

    runtime = await Runtime.start(settings)
    try:
        await runtime.drop_tenant(tenant)
    finally:
        await runtime.aclose()


