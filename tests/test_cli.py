"""The command line as a user runs it: subprocesses, embedded mode on a fresh data dir, real services."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
NOW = "2026-11-23T09:00:00+00:00"
# A generous bound for a short command on a loaded machine: it is a deadline, not a speed check (bench/cli.py
# measures start-up).
DEADLINE = 180


def run(
    args: list[str], *, stdin: str = "", env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: int = DEADLINE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    """A fresh machine: no REDIS_URL / DATABASE_URL, data under a new directory."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["BOOKINGBOT_DATA_DIR"] = str(tmp_path / "var")
    env["BOOKINGBOT_CONFIG"] = str(ROOT / "config.yaml")
    return env


def test_piped_chat_books_in_embedded_mode(embedded_env: dict[str, str], tmp_path: Path) -> None:
    script = "hi\nhaircut tomorrow at 5pm\nJohn\n+447700900123\nyes\n"
    out = run(["chat", "--tenant", "demo", "--now", NOW], stdin=script, env=embedded_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[0] == "> hi"
    assert "> yes" in lines
    assert "17:00" in out.stdout.split("> yes", 1)[1]
    assert (tmp_path / "var").is_dir()


def test_chat_button_by_number(embedded_env: dict[str, str], tmp_path: Path) -> None:
    out = run(["chat", "--tenant", "demo", "--now", NOW], stdin="hi\n1\ntomorrow\n1\n", env=embedded_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    after = out.stdout.split("> 1", 2)
    assert len(after) == 3  # both "1"s were echoed and answered


def test_extract_prints_slots() -> None:
    out = run(["extract", "--tenant", "demo", "--text", "haircut tomorrow at 5pm, I'm John", "--now", NOW])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"service": "haircut", "date": "2026-11-24", "time": "17:00", "name": "John"}


def test_extract_ru() -> None:
    out = run(["extract", "--tenant", "demo-ru", "--text", "маникюр в пятницу в 15:00", "--now", NOW])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"service": "manicure", "date": "2026-11-27", "time": "15:00"}


@pytest.mark.parametrize("module", ["bot.cli", "bot.settings", "bot.config", "bot.runtime", "bot.booking.local"])
def test_reading_the_config_does_not_import_channel_sdks(module: str) -> None:
    """aiogram costs seconds of CPU to import: only a process that builds a Telegram adapter may load it."""
    code = f"import sys, {module}; print(sorted(m for m in ('aiogram', 'channels.telegram') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=DEADLINE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_help_loads_no_config_machinery() -> None:
    code = "import sys, bot.cli; print(sorted(m for m in ('pydantic', 'ruamel.yaml') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=DEADLINE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_check_config_ok_and_bad(tmp_path: Path) -> None:
    assert run(["check-config", "--config", str(ROOT / "config.yaml")]).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config.yaml").read_text().replace("Europe/London", "Europe/Londn", 1))
    out = run(["check-config", "--config", str(bad)])
    assert out.returncode == 1
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if "Europe/Londn" in t)
    assert f"{bad}:{line}:" in out.stderr and "Europe/Londn" in out.stderr


def test_graph_mermaid() -> None:
    out = run(["graph", "--tenant", "demo"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("stateDiagram-v2")
    for state in ("ask_service", "ask_time", "confirm", "booked", "cancel_confirm", "handoff"):
        assert state in out.stdout


def test_unknown_tenant_is_a_clear_error() -> None:
    out = run(["extract", "--tenant", "nope", "--text", "x"])
    assert out.returncode == 2 and "unknown tenant 'nope'" in out.stderr


def _private_tenant_config(tmp_path: Path) -> tuple[Path, str]:
    """The shipped config with the demo tenant renamed, so this run's bookings meet no earlier run's."""
    yaml = YAML()
    doc = yaml.load((ROOT / "config.yaml").read_text())
    tenant = f"t{uuid.uuid4().hex[:10]}"
    doc["tenants"][tenant] = doc["tenants"].pop("demo")
    path = tmp_path / "config.yaml"
    with path.open("w") as out:
        yaml.dump(doc, out)
    return path, tenant


def test_export_then_replay_round_trip(services_env: dict[str, str], tmp_path: Path) -> None:
    config, tenant = _private_tenant_config(tmp_path)
    env = {**os.environ, **services_env, "BOOKINGBOT_CONFIG": str(config)}
    user = "lucy"
    script = "hi\nmanicure tomorrow at 2pm\nLucy\n+447700900444\nyes\n"
    chat = run(["chat", "--tenant", tenant, "--user", user, "--now", NOW], stdin=script, env=env)
    assert chat.returncode == 0, chat.stderr
    fixture = tmp_path / "exported.yaml"
    out = run(["export", "--conversation", f"{tenant}/terminal:{user}", "--out", str(fixture)], env=env)
    assert out.returncode == 0, out.stderr
    text = fixture.read_text()
    assert "state: booked" in text and "manicure" in text
    replay = run(["replay", str(fixture)], env=env)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert replay.stdout.strip().endswith("1 passed, 0 failed")


def test_bookings_prints_the_day(services_env: dict[str, str], tmp_path: Path) -> None:
    config, tenant = _private_tenant_config(tmp_path)
    env = {**os.environ, **services_env, "BOOKINGBOT_CONFIG": str(config)}
    script = "hi\nmanicure tomorrow at 2pm\nLucy\n+447700900444\nyes\n"
    assert run(["chat", "--tenant", tenant, "--now", NOW], stdin=script, env=env).returncode == 0
    day = run(["bookings", "--tenant", tenant, "--day", "2026-11-24"], env=env)
    assert day.returncode == 0, day.stderr
    assert f"{tenant}: 1 booking, Tue 24 Nov 2026" in day.stdout
    assert "Tue 24 Nov 14:00" in day.stdout and "manicure" in day.stdout and "Lucy" in day.stdout
    other = run(["bookings", "--tenant", tenant, "--day", "2026-11-25"], env=env)
    assert f"{tenant}: 0 bookings" in other.stdout
    bad = run(["bookings", "--tenant", tenant, "--day", "24.11.2026"], env=env)
    assert bad.returncode == 2 and "invalid fromisoformat value" in bad.stderr


def _accepted_connections(port: int) -> int:
    """Established TCP connections on the server side of ``port`` (from /proc/net/tcp)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "01")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_reports_a_busy_port_at_once(embedded_env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run(["serve", "--port", str(port)], env=embedded_env, cwd=tmp_path)
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr and f"--port {port + 10}" in out.stderr
    assert not (tmp_path / "var").exists()  # nothing was started


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_with_a_chat_open(embedded_env: dict[str, str], tmp_path: Path, signum: int) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "serve", "--port", str(port)],
        env=embedded_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        while "web chat of demo-ru" not in (line := proc.stdout.readline()):
            assert line, "serve ended before printing its URLs"
        base = f"http://127.0.0.1:{port}"
        page = httpx.get(f"{base}/chat/demo", headers={"Connection": "close"}, timeout=DEADLINE).text
        with httpx.Client(timeout=DEADLINE) as client:
            user = re.search(r'data-user="([^"]+)"', page)
            token = re.search(r'data-token="([^"]+)"', page)
            assert user and token
            polls: list[int] = []

            def long_poll() -> None:
                url = f"{base}/chat/demo/messages?user_id={user[1]}&after=0&wait=25"
                polls.append(client.get(url, headers={"X-Chat-Token": token[1]}).status_code)

            waiting = threading.Thread(target=long_poll)
            waiting.start()
            deadline = time.monotonic() + DEADLINE
            while not _accepted_connections(port):  # the poll reached the server (it is waiting for replies)
                assert time.monotonic() < deadline, "the long poll never connected"
                time.sleep(0.05)
            proc.send_signal(signum)
            proc.wait(timeout=10)
            waiting.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr
    assert polls == [200]  # answered (empty), not cut
    assert not (tmp_path / "var" / "redis.db.settings").exists(), "the embedded Redis was left running"
