"""Real ``bookingbot serve`` / ``bookingbot worker`` processes, a Telegram double in its own process, and the
checks of what reached it: the stack shared by the benchmarks that run the product as it is deployed
(``bench/webhooks.py``, ``bench/faults.py``) and by the crash tests.

Every process runs in its own process group, so stopping one stops whatever it started; the tenants live in a
temporary config file (clones of config.yaml's ``demo`` whose Telegram goes to the double) and :func:`cleanup`
deletes their Redis keys, arq jobs and SQL rows. ``python -m bench.procstack double --token T ...`` runs the
double with its receipt stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web

from bot import keys
from bot.config import load_config
from bot.pipeline import Pipeline
from bot.runtime import Runtime
from bot.settings import Settings
from channels.base import InboundMessage
from tests.doubles import serve as serve_double
from tests.doubles.telegram import SECRET_HEADER, TelegramDouble

ROOT = Path(__file__).resolve().parent.parent
START_LIMIT_S = 120  # one process to become ready (generous: the machine may be loaded)
HEALTH_KEY = keys.worker_heartbeat(keys.JOB_QUEUE)  # arq sets it at a worker's first poll of the queue

class BenchError(Exception):
    """The bench could not measure (a process failed to start, a webhook was refused, ...)."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)



# --- the Telegram double, in its own process, streaming when each reply arrived ------------------------------


def run_double(tokens: Sequence[str]) -> None:
    """``python -m bench.webhooks double --token T ...``: the Telegram double, plus ``GET /bench/receipts``,
    a stream of one JSON line per accepted ``sendMessage``: ``{"token", "chat", "text", "t"}`` where ``t`` is
    ``time.monotonic()`` when the request reached the double."""
    double = TelegramDouble(*tokens)
    listeners: set[asyncio.Queue[bytes]] = set()

    @web.middleware
    async def stamp(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        arrived = time.monotonic()
        response = await handler(request)
        if (
            request.match_info.get("method", "").lower() == "sendmessage"
            and response.status == 200
            and isinstance(response, web.Response)
            and response.text
        ):
            result = json.loads(response.text)["result"]
            line = {"token": request.match_info["token"], "chat": str(result["chat"]["id"]), "t": arrived}
            encoded = (json.dumps(line | {"text": result["text"]}) + "\n").encode()
            for queue in listeners:
                queue.put_nowait(encoded)
        return response

    async def receipts(request: web.Request) -> web.StreamResponse:
        stream = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await stream.prepare(request)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        listeners.add(queue)
        try:
            await stream.write(b'{"hello": true}\n')
            while True:
                lines = [await queue.get()]
                while not queue.empty():
                    lines.append(queue.get_nowait())
                await stream.write(b"".join(lines))
        finally:
            listeners.discard(queue)

    double.app.middlewares.append(stamp)
    double.app.router.add_get("/bench/receipts", receipts)
    serve_double(double, 0)


class Receipts:
    """What reached the double, per chat, in arrival order (fed by the double's receipt stream)."""

    def __init__(self) -> None:
        self.texts: dict[str, list[str]] = defaultdict(list)
        self.times: dict[str, list[float]] = defaultdict(list)
        self.last_by_token: dict[str, float] = {}
        self._arrived: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.ready = asyncio.Event()

    async def follow(self, client: aiohttp.ClientSession, double_url: str) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with client.get(f"{double_url}/bench/receipts", timeout=timeout) as response:
            async for line in response.content:
                receipt = json.loads(line)
                if receipt.get("hello"):
                    self.ready.set()
                    continue
                chat = receipt["chat"]
                self.texts[chat].append(receipt["text"])
                self.times[chat].append(receipt["t"])
                self.last_by_token[receipt["token"]] = receipt["t"]
                self._arrived[chat].set()

    async def wait_for(self, chat: str, count: int, within: float) -> bool:
        """Until ``count`` replies reached ``chat`` (True), or ``within`` s passed (False)."""
        deadline = time.monotonic() + within
        while len(self.texts[chat]) < count:
            event = self._arrived[chat]
            event.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)
        return True

    async def quiet(self, token: str, seconds: float, limit: float) -> None:
        """Until the bot ``token`` got no reply for ``seconds`` (at most ``limit`` s)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if time.monotonic() - self.last_by_token.get(token, 0.0) >= seconds:
                return
            await asyncio.sleep(0.2)



# --- tenants, config and processes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bot:
    """One tenant of the run with its Telegram bot."""

    tenant: str
    token: str
    secret: str


def write_config(env: dict[str, str], bots: Sequence[Bot], double_url: str, path: Path) -> Settings:
    """config.yaml with only the run's tenants, clones of ``demo`` whose Telegram goes to the double, written
    to ``path`` (as JSON, which is YAML) and loaded back the way the processes will load it."""
    data = load_config(ROOT / "config.yaml", env=env).model_dump(mode="json", exclude_none=True)
    demo = data["tenants"]["demo"]
    data["tenants"] = {
        bot.tenant: demo | {"channels": {"telegram": {"token": bot.token, "webhook_secret": bot.secret,
                                                      "api_base": double_url}}}
        for bot in bots
    }  # fmt: skip
    data["data_dir"] = str(path.parent)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return load_config(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_log(path: Path) -> IO[bytes]:
    return path.open("ab")


@dataclass
class Process:
    """A child process in its own process group (so stopping it stops whatever it started)."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path

    @classmethod
    async def start(cls, name: str, argv: Sequence[str], log: Path, *, stdout: int | None = None) -> Process:
        with open_log(log) as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=ROOT, stdout=stdout or out, stderr=out, start_new_session=True
            )
        return cls(name, proc, log)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def check_alive(self) -> None:
        if self.proc.returncode is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise BenchError(f"{self.name} exited with {self.proc.returncode}; its log ends:\n{tail}")

    async def stop(self) -> None:
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), grace)
                return


@dataclass
class Stack:
    """The servers and workers of the run, on one temporary config."""

    config: Path
    logs: Path
    client: aiohttp.ClientSession
    runtime: Runtime
    servers: list[tuple[Process, str]] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [url for _, url in self.servers]

    async def add_server(self) -> str:
        port = free_port()
        index = len(self.servers) + 1
        argv = [sys.executable, "-m", "bot", "serve", "--config", str(self.config), "--port", str(port)]
        server = await Process.start(f"serve #{index}", argv, self.logs / f"serve{index}.log")
        url = f"http://127.0.0.1:{port}"
        self.servers.append((server, url))
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline:
            server.check_alive()
            with suppress(aiohttp.ClientError):
                async with self.client.get(f"{url}/health/ready") as response:
                    if response.status == 200:
                        return url
            await asyncio.sleep(0.1)
        raise BenchError(f"serve #{index} not ready after {START_LIMIT_S} s (log: {server.log})")

    async def add_worker(self) -> Process:
        """Start a worker and wait for its first poll of the queue: it sets arq's health-check key, which no
        running worker sets again within the hour, so deleting the key first makes it this worker's signal."""
        redis = self.runtime.redis
        await redis.delete(HEALTH_KEY)
        index = len(self.workers) + 1
        argv = [sys.executable, "-m", "bot", "worker", "--config", str(self.config)]
        worker = await Process.start(f"worker #{index}", argv, self.logs / f"worker{index}.log")
        self.workers.append(worker)
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline:
            worker.check_alive()
            if await redis.exists(HEALTH_KEY):
                return worker
            await asyncio.sleep(0.1)
        raise BenchError(f"worker #{index} not polling after {START_LIMIT_S} s (log: {worker.log})")

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in [*(s for s, _ in self.servers), *self.workers]))


async def start_double(tokens: Sequence[str], logs: Path) -> tuple[Process, str]:
    argv = [sys.executable, "-m", "bench.procstack", "double", *(f"--token={t}" for t in tokens)]
    double = await Process.start("telegram double", argv, logs / "double.log", stdout=subprocess.PIPE)
    assert double.proc.stdout is not None
    line = await asyncio.wait_for(double.proc.stdout.readline(), START_LIMIT_S)
    if b"listening on" not in line:
        double.check_alive()
        raise BenchError(f"the Telegram double said {line!r}")
    return double, line.decode().split()[-1]


# --- Telegram updates ---------------------------------------------------------------------------------------


def tg_update(update_id: int, user: int, message_id: int, text: str) -> bytes:
    """A text update as Telegram posts it (the shape of fixtures/channels/telegram/text.json)."""
    person = {"first_name": "Anna", "last_name": "Smith", "username": "anna_s"}
    message = {
        "message_id": message_id,
        "from": {"id": user, "is_bot": False, **person, "language_code": "en"},
        "chat": {"id": user, **person, "type": "private"},
        "date": int(time.time()),
        "text": text,
    }
    return json.dumps({"update_id": update_id, "message": message}).encode()


async def post_update(client: aiohttp.ClientSession, url: str, bot: Bot, body: bytes) -> None:
    headers = {"Content-Type": "application/json", SECRET_HEADER: bot.secret}
    async with client.post(f"{url}/webhooks/telegram/{bot.tenant}", data=body, headers=headers) as response:
        if response.status != 200:
            raise BenchError(f"webhook answered {response.status}: {await response.text()}")



# --- expected dialogs and what arrived ------------------------------------------------------------------------

@dataclass(frozen=True)
class Dialog:
    turns: list[str]
    replies: list[list[str]]  # expected reply texts per turn

    @property
    def expected(self) -> list[str]:
        return [text for turn in self.replies for text in turn]


def booking_turns(now: datetime) -> list[str]:
    """The 6-turn booking dialog, on a working day a few days ahead (17:00 is then free)."""
    day = now.astimezone(ZoneInfo("Europe/London")).date() + timedelta(days=3)
    if day.weekday() == 6:  # the demo salon is closed on Sundays
        day += timedelta(days=1)
    return ["hi", "haircut", f"{day.day} {day:%B}", "17:00", "John", "+447700900123"]


async def expected_dialog(
    runtime: Runtime, tenant: str, turns: Sequence[str] | None = None, *, user: str = "1", expect: str = "17:00"
) -> Dialog:
    """The dialog's replies to ``turns`` (default: :func:`booking_turns`) from the in-process pipeline (the
    oracle the processes are checked against); its last reply must mention ``expect``."""
    pipeline, now = Pipeline(runtime), datetime.now(UTC)
    turns, replies = list(turns or booking_turns(now)), []
    for index, text in enumerate(turns):
        msg = InboundMessage(tenant=tenant, channel="telegram", user_id=user, event_id=f"oracle-{index}", text=text)
        replies.append([reply.text for reply in (await pipeline.handle(msg, now)).replies])
    if expect not in replies[-1][-1]:
        raise BenchError(f"the dialog did not end as expected ({expect!r}): {replies}")
    return Dialog(turns, replies)


@dataclass
class Counts:
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.lost + other.lost, self.duplicated + other.duplicated, self.reordered + other.reordered)

    def __str__(self) -> str:
        return f"{self.lost} / {self.duplicated} / {self.reordered}"


def check_chat(expected: Sequence[str], got: Sequence[str]) -> Counts:
    """``got`` against ``expected``: replies missing, replies beyond their expected count, and whether the
    rest came in another order or holds a reply of no turn (1) or not (0)."""
    want, have = Counter(expected), Counter(got)
    foreign = sum(n for text, n in have.items() if text not in want)
    seen: Counter[str] = Counter()
    kept = []  # the replies received, each no more often than expected
    for text in got:
        seen[text] += 1
        if seen[text] <= want[text]:
            kept.append(text)
    missing = want - Counter(kept)
    delivered = []  # the expected replies that did arrive, in the dialog's order
    for text in expected:
        if missing[text]:
            missing[text] -= 1
        else:
            delivered.append(text)
    duplicated = sum((have - want).values()) - foreign
    return Counts(sum((want - have).values()), duplicated, int(foreign > 0 or kept != delivered))



async def cleanup(runtime: Runtime, bots: Sequence[Bot]) -> None:
    """Delete the run's arq jobs (found through the tenants' drain markers), Redis keys and SQL rows."""
    redis = runtime.redis
    for bot in bots:
        async for marker in redis.scan_iter(match=keys.scheduled(bot.tenant, "*")):
            job_id = await redis.get(marker)
            if job_id:
                await redis.zrem(keys.JOB_QUEUE, job_id)
                await redis.delete(keys.job(job_id))
        await runtime.drop_tenant(bot.tenant)


async def stop_task(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)



def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.procstack", description="the Telegram double")
    sub = parser.add_subparsers(dest="mode", required=True)
    double = sub.add_parser("double", help="run the Telegram double with its receipt stream")
    double.add_argument("--token", action="append", required=True)
    args = parser.parse_args(argv)
    run_double(args.token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
