"""Webhook acknowledgement and end-to-end latency of real ``bookingbot serve`` / ``bookingbot worker`` processes.

Everything runs on this machine: the real Redis and PostgreSQL (``REDIS_URL`` / ``DATABASE_URL``), the server
and worker as separate OS processes (each in its own process group, all stopped at the end), the Telegram
double (``tests/doubles/telegram.py``) in a third process, and the load generator. The tenants are clones of
config.yaml's ``demo`` under ids unique to the run (``bench-<run>-...``) in a temporary config file; their
Redis keys, SQL rows and arq jobs are deleted at the end.

1. Acknowledgements: one server + one worker; ``wrk`` (``bench/webhooks.lua``; installed with apt-get when
   missing, else the Python load generator below, and the table says which ran) posts realistic, correctly
   signed Telegram text updates with unique ``update_id`` over 5,000 conversations at 50 connections for 10 s,
   after a 2 s warm-up. acks/s = 200 answers / s; p50 / p99 are the load generator's latencies. The server's
   own ``/metrics`` must agree that none was a duplicate. This tenant has its own bot, so the backlog the worker
   cannot send at Telegram's 30 messages/s is dropped (its queued jobs and inboxes) before the next checks.
2. End to end: 200 concurrent conversations, each the 6-turn booking dialog (hi, haircut, a date, 17:00, John,
   a phone) sent like a human: a message only after the previous turn's replies reached the double, then a
   read time of 1 s per reply (+ up to 0.5 s), which also keeps each chat within Telegram's 1 message/s that
   the sender enforces. Telegram allows a bot about 30 messages/s, so the conversations are spread over 20 bots
   (tenants) of 10 chats each, as on a host of many businesses; otherwise the measurement would be the rate
   limiter's queue. Latency of a turn = the double's arrival time of the turn's LAST reply minus the moment the
   bench started posting the webhook. The double stamps each ``sendMessage`` with ``time.monotonic()`` when
   the request reaches it and streams the stamps to the bench (``GET /bench/receipts``); CLOCK_MONOTONIC is
   one clock for every process on the machine, so the delay of that stream (it only paces the next message)
   is not part of the number.
3. Scale-out and order: a second server and a second worker join; the same 200 human-paced conversations,
   each turn posted to the other server than the one before; then 200 more conversations whose 6 messages go
   back to back (each posted after the previous one was acknowledged, alternating servers), so that both
   workers race for every conversation. For every chat the double must have received exactly the expected
   replies in the expected order: the dialog is deterministic, and its expected replies come from the same
   dialog run through the in-process pipeline (texts only; the offered buttons depend on the clock).
   Counts: ``lost`` / ``duplicated`` = replies missing / received more often than expected; ``reordered`` =
   chats whose replies came in another order or include a reply of no turn (a message handled in the wrong
   state). Checks 2 and 3 are counted alike and the last line sums them.

Usage: ``make bench-webhooks`` (or ``python -m bench.webhooks [--loadgen auto|wrk|python]``), about 80 s. Prints a
Markdown table, the CPU each process used during the acknowledgement run (the machine's cores are shared by
everything above), and last ``acks_per_s=X ack_p99_ms=Y e2e_p99_ms=Z lost=N duplicated=N reordered=N``
(e2e: every human-paced turn of checks 2 and 3); exits 1 when a reply was lost, duplicated or reordered,
2 when the bench could not measure. Progress goes to stderr; the processes' logs to a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web
from arq.constants import health_check_key_suffix
from prometheus_client.parser import text_string_to_metric_families

from bench.latency import percentile_ms
from bot import keys
from bot.config import load_config
from bot.pipeline import Pipeline
from bot.runtime import Runtime
from bot.settings import Settings
from channels.base import InboundMessage
from tests.doubles import serve as serve_double
from tests.doubles.telegram import SECRET_HEADER, TelegramDouble

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).with_suffix(".lua")
RUN_LIMIT_S = 170  # the whole run, cleanup excluded
START_LIMIT_S = 30  # one process to become ready
CONNECTIONS = 50
ACK_SECONDS, ACK_WARMUP_SECONDS = 10, 2
ACK_CHATS, ACK_FIRST_CHAT = 5000, 700_000_000
ACK_TEXT = "Hi, can I get a haircut tomorrow?"  # also in bench/webhooks.lua
BOTS, CHATS_PER_BOT = 20, 10  # 200 concurrent conversations
READ_S_PER_REPLY = 1.0  # a human reads each reply; also Telegram's 1 message/s per chat
TURN_LIMIT_S = 10.0  # a turn's replies not at the double by then are lost
SETTLE_S = 1.5  # after the last expected reply: time for a duplicate to show up
HEALTH_KEY = keys.JOB_QUEUE + health_check_key_suffix  # arq sets it at a worker's first poll of the queue


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


def make_bots(run: str) -> tuple[Bot, list[Bot]]:
    """The acknowledgement tenant, and the tenants of the end-to-end checks."""
    bots = [Bot(f"bench-{run}-{k:02d}", f"{900_001 + k}:bench{run}", f"secret-{run}-{k}") for k in range(BOTS + 1)]
    return bots[-1], bots[:-1]


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
    argv = [sys.executable, "-m", "bench.webhooks", "double", *(f"--token={t}" for t in tokens)]
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


# --- 1. acknowledgements ------------------------------------------------------------------------------------


@dataclass
class Acks:
    tool: str
    answered: int  # 200s
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # refused, failed or timed out

    @property
    def per_second(self) -> float:
        return self.answered / self.seconds


async def find_wrk(choice: str) -> str | None:
    """wrk's path; installed with apt-get when missing (as root). None: use the Python load generator."""
    if choice == "python":
        return None
    path = shutil.which("wrk")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        log("wrk is not installed: apt-get install -y wrk")
        argv = ["apt-get", "install", "-y", "-q", "wrk"]
        installer = await Process.start("apt-get", argv, Path(tempfile.gettempdir()) / "bench-webhooks-apt.log")
        with suppress(TimeoutError):
            await asyncio.wait_for(installer.proc.wait(), 120)
        await installer.stop()
        path = shutil.which("wrk")
    if path is None and choice == "wrk":
        raise BenchError("wrk is not installed and could not be installed (apt-get install wrk)")
    if path is None:
        log(
            "wrk unavailable (apt-get install wrk): using the Python load generator, which competes with the "
            "server for the CPU much more than wrk does, so its numbers are a lower bound"
        )
    return path


async def wrk_load(wrk: str, url: str, bot: Bot, seconds: int, first_id: int) -> Acks:
    threads = 1  # one wrk thread keeps up with one Python server and leaves it the CPU
    argv = [
        wrk, f"-t{threads}", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(LUA),
        f"{url}/webhooks/telegram/{bot.tenant}",
        "--", bot.secret, str(first_id), str(ACK_CHATS), str(ACK_FIRST_CHAT), str(threads),
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds + 30)
    finally:
        if proc.returncode is None:  # the bench was interrupted
            proc.kill()
            await proc.wait()
    summary = next((line for line in out.decode().splitlines() if line.startswith("{")), None)
    if proc.returncode != 0 or summary is None:
        raise BenchError(f"wrk failed ({proc.returncode}): {err.decode()[-1000:]}{out.decode()[-1000:]}")
    result = json.loads(summary)
    errors = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    answered = result["requests"] - result["status"]
    elapsed = result["duration_us"] / 1e6
    return Acks("wrk", answered, elapsed, result["p50_us"] / 1000, result["p99_us"] / 1000, errors)


async def python_load(url: str, bot: Bot, seconds: int, first_id: int) -> Acks:
    """The fallback load generator: CONNECTIONS tasks posting back to back over keep-alive connections."""
    ids = itertools.count(first_id)
    latencies: list[float] = []
    errors = 0
    hook = f"{url}/webhooks/telegram/{bot.tenant}"
    headers = {"Content-Type": "application/json", SECRET_HEADER: bot.secret}
    started = time.perf_counter()
    deadline = started + seconds

    async def connection(client: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            update_id = next(ids)
            body = tg_update(update_id, ACK_FIRST_CHAT + update_id % ACK_CHATS, update_id, ACK_TEXT)
            sent = time.perf_counter()
            try:
                async with client.post(hook, data=body, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - sent)
            else:
                errors += 1

    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as client:
        await asyncio.gather(*(connection(client) for _ in range(CONNECTIONS)))
    elapsed = time.perf_counter() - started
    p50, p99 = percentile_ms(latencies, 50), percentile_ms(latencies, 99)
    return Acks("python (aiohttp)", len(latencies), elapsed, p50, p99, errors)


async def webhook_counts(client: aiohttp.ClientSession, url: str) -> Counter[str]:
    """The server's telegram counters: answers by status and inbound messages by outcome."""
    async with client.get(f"{url}/metrics") as response:
        exposition = await response.text()
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("channel") == "telegram":
                label = sample.labels.get("status") or sample.labels.get("outcome", "")
                counts[f"{family.name}:{label}"] += int(sample.value)
    return counts


async def measure_acks(stack: Stack, bot: Bot, wrk: str | None, double: Process) -> tuple[Acks, dict[str, float]]:
    """The acknowledgement run, and the CPU each process used meanwhile (% of one core)."""
    url = stack.urls[0]

    async def load(seconds: int, first_id: int) -> Acks:
        if wrk is None:
            return await python_load(url, bot, seconds, first_id)
        return await wrk_load(wrk, url, bot, seconds, first_id)

    async def redis_cpu() -> float:
        info = await stack.runtime.redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def children_cpu() -> float:  # wrk, once it has exited
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    meters = {p.name: p.cpu for p in [*(s for s, _ in stack.servers), *stack.workers, double]}
    meters["wrk" if wrk else "bench (load generator)"] = children_cpu if wrk else time.process_time

    await load(ACK_WARMUP_SECONDS, 1_000_000_000)
    counted = await webhook_counts(stack.client, url)
    before = {name: meter() for name, meter in meters.items()}
    redis_before = await redis_cpu()
    acks = await load(ACK_SECONDS, 2_000_000_000)
    cpu = {name: 100 * (meter() - before[name]) / acks.seconds for name, meter in meters.items()}
    cpu["redis-server"] = 100 * (await redis_cpu() - redis_before) / acks.seconds
    counted = await webhook_counts(stack.client, url) - counted
    if counted["bookingbot_inbound_messages:duplicate"] or acks.errors:
        raise BenchError(
            f"{counted['bookingbot_inbound_messages:duplicate']} webhooks were deduplicated and {acks.errors} "
            "failed: not a fair measurement"
        )
    log(
        f"  {acks.answered} acknowledged by {acks.tool} ({counted['bookingbot_webhooks:200']} counted by the "
        f"server): {acks.per_second:,.0f}/s, p50 {acks.p50_ms:.1f} ms, p99 {acks.p99_ms:.1f} ms"
    )
    return acks, cpu


async def drop_backlog(stack: Stack, receipts: Receipts, bot: Bot) -> None:
    """Forget the acknowledgement tenant's unprocessed messages: its queued drain jobs and its inboxes (a drain
    already running finds the inbox gone and stops), then wait until its last replies were sent."""
    redis = stack.runtime.redis
    async with redis.pipeline(transaction=False) as pipe:
        async for marker in redis.scan_iter(match=keys.scheduled(bot.tenant, "*"), count=1000):
            job_id = await redis.get(marker)
            if job_id:
                pipe.zrem(keys.JOB_QUEUE, job_id)
                pipe.delete(keys.job(job_id))
        async for inbox in redis.scan_iter(match=keys.inbox(bot.tenant, "*"), count=1000):
            pipe.delete(inbox)
        await pipe.execute()
    await receipts.quiet(bot.token, 1.0, limit=20)


# --- 2 and 3. end to end ------------------------------------------------------------------------------------


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


async def expected_dialog(runtime: Runtime, tenant: str) -> Dialog:
    """The dialog's replies from the in-process pipeline (the oracle the processes are checked against)."""
    pipeline, now = Pipeline(runtime), datetime.now(UTC)
    turns, replies = booking_turns(now), []
    for index, text in enumerate(turns):
        msg = InboundMessage(tenant=tenant, channel="telegram", user_id="1", event_id=f"oracle-{index}", text=text)
        replies.append([reply.text for reply in (await pipeline.handle(msg, now)).replies])
    if "17:00" not in replies[-1][-1]:
        raise BenchError(f"the booking dialog did not reach its summary: {replies}")
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


@dataclass
class EndToEnd:
    name: str
    processes: str
    load: str
    latencies: list[float]  # per turn; none when the messages went back to back
    counts: Counts


@dataclass
class Conversations:
    """The run-wide sources of unique update ids and chat ids."""

    update_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(3_000_000_000))
    chat_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(600_000_000))


async def converse(
    stack: Stack, receipts: Receipts, dialog: Dialog, bot: Bot, chat: int, ids: Conversations, paced: bool
) -> list[float]:
    """One customer through the dialog, alternating servers; the latency of each completed turn."""
    latencies: list[float] = []
    expected_so_far = 0
    urls = stack.urls
    await asyncio.sleep(random.uniform(0, 2.0))  # customers do not all start in the same millisecond
    for index, text in enumerate(dialog.turns):
        body = tg_update(next(ids.update_ids), chat, index + 1, text)
        started = time.monotonic()
        await post_update(stack.client, urls[(chat + index) % len(urls)], bot, body)
        expected_so_far += len(dialog.replies[index])
        if not paced:
            continue
        if not await receipts.wait_for(str(chat), expected_so_far, TURN_LIMIT_S):
            return latencies  # lost: the check counts it
        latencies.append(receipts.times[str(chat)][expected_so_far - 1] - started)
        await asyncio.sleep(READ_S_PER_REPLY * len(dialog.replies[index]) + random.uniform(0, 0.5))
    if not paced:
        await receipts.wait_for(str(chat), expected_so_far, TURN_LIMIT_S + len(dialog.expected) * READ_S_PER_REPLY)
    return latencies


async def end_to_end(
    stack: Stack, receipts: Receipts, dialog: Dialog, bots: Sequence[Bot], ids: Conversations, *, paced: bool
) -> tuple[list[float], Counts]:
    chats = [(bot, next(ids.chat_ids)) for bot in bots for _ in range(CHATS_PER_BOT)]
    runs = [converse(stack, receipts, dialog, bot, chat, ids, paced) for bot, chat in chats]
    latencies = [latency for run in await asyncio.gather(*runs) for latency in run]
    await asyncio.sleep(SETTLE_S)
    counts = Counts()
    for _, chat in chats:
        counts += check_chat(dialog.expected, receipts.texts[str(chat)])
    return latencies, counts


async def warm_up(stack: Stack, receipts: Receipts, dialog: Dialog, bots: Sequence[Bot], ids: Conversations) -> None:
    """One greeting per bot through every server: connections, caches and the whole path exercised once."""
    for url in stack.urls:
        chats = [(bot, next(ids.chat_ids)) for bot in bots]
        for bot, chat in chats:
            await post_update(stack.client, url, bot, tg_update(next(ids.update_ids), chat, 1, dialog.turns[0]))
        for _, chat in chats:
            if not await receipts.wait_for(str(chat), len(dialog.replies[0]), START_LIMIT_S):
                raise BenchError(f"no greeting reached the double for chat {chat} within {START_LIMIT_S} s")


# --- the run ------------------------------------------------------------------------------------------------


@dataclass
class Results:
    acks: Acks
    ack_cpu: dict[str, float]  # % of one core per process during the acknowledgement run
    e2e: list[EndToEnd] = field(default_factory=list)

    @property
    def counts(self) -> Counts:
        total = Counts()
        for run in self.e2e:
            total += run.counts
        return total

    @property
    def e2e_latencies(self) -> list[float]:
        return [latency for run in self.e2e for latency in run.latencies]

    def table(self) -> str:
        acks = self.acks
        rows = [
            "| check | processes | load | acks/s | p50 ms | p99 ms | lost / duplicated / reordered |",
            "|---|---|---|---|---|---|---|",
            f"| webhook acknowledgement | 1 serve + 1 worker | {acks.tool}, {CONNECTIONS} connections, "
            f"{ACK_SECONDS} s, {ACK_CHATS:,} conversations | {acks.per_second:,.0f} | {acks.p50_ms:.1f} | "
            f"{acks.p99_ms:.1f} | |",
        ]
        for run in self.e2e:
            latency = "- | -"
            if run.latencies:
                latency = f"{percentile_ms(run.latencies, 50):.1f} | {percentile_ms(run.latencies, 99):.1f}"
            rows.append(f"| {run.name} | {run.processes} | {run.load} | | {latency} | {run.counts} |")
        return "\n".join(rows)

    def cpu_note(self) -> str:
        usage = ", ".join(f"{name} {pct:.0f}%" for name, pct in self.ack_cpu.items())
        return f"CPU during the acknowledgement run, % of one core ({os.cpu_count()} cores): {usage}."

    def last_line(self) -> str:
        counts = self.counts
        return (
            f"acks_per_s={self.acks.per_second:.0f} ack_p99_ms={self.acks.p99_ms:.2f} "
            f"e2e_p99_ms={percentile_ms(self.e2e_latencies, 99):.2f} "
            f"lost={counts.lost} duplicated={counts.duplicated} reordered={counts.reordered}"
        )


async def measure(
    stack: Stack, receipts: Receipts, ack_bot: Bot, bots: list[Bot], wrk: str | None, double: Process
) -> Results:
    dialog = await expected_dialog(stack.runtime, bots[0].tenant)
    ids = Conversations()
    load = f"{len(bots) * CHATS_PER_BOT} conversations x {len(dialog.turns)} turns"
    await stack.add_server()
    await stack.add_worker()
    await warm_up(stack, receipts, dialog, [ack_bot, *bots], ids)
    log("1. acknowledgements")
    acks, cpu = await measure_acks(stack, ack_bot, wrk, double)
    results = Results(acks, cpu)
    await drop_backlog(stack, receipts, ack_bot)

    async def check(name: str, paced: bool) -> None:
        latencies, counts = await end_to_end(stack, receipts, dialog, bots, ids, paced=paced)
        processes = f"{len(stack.servers)} serve + {len(stack.workers)} worker{'s' * (len(stack.workers) > 1)}"
        pace = "human-paced" if paced else "back to back"
        results.e2e.append(EndToEnd(name, processes, f"{load}, {pace}", latencies, counts))
        if latencies:
            p50, p99 = percentile_ms(latencies, 50), percentile_ms(latencies, 99)
            log(f"  {len(latencies)} turns: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        log(f"  lost / duplicated / reordered: {counts}")

    log("2. end to end, 1 server + 1 worker")
    await check("end to end", paced=True)
    log("3. end to end and order, 2 servers + 2 workers")
    await stack.add_server()
    await stack.add_worker()
    await warm_up(stack, receipts, dialog, bots, ids)
    await check("end to end, turns alternate servers", paced=True)
    await check("order, messages alternate servers", paced=False)
    return results


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


async def run(args: argparse.Namespace) -> int:
    wrk = await find_wrk(args.loadgen)
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)  # SIGINT: asyncio.run does it
    env = {
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    }
    ack_bot, bots = make_bots(uuid.uuid4().hex[:8])
    load_before = os.getloadavg()[0]
    async with AsyncExitStack() as undo:  # everything started is stopped, in reverse order, whatever happens
        logs = Path(undo.enter_context(tempfile.TemporaryDirectory(prefix="bench-webhooks-")))
        double, double_url = await start_double([b.token for b in (ack_bot, *bots)], logs)
        undo.push_async_callback(double.stop)
        runtime = await Runtime.start(write_config(env, [ack_bot, *bots], double_url, logs / "config.yaml"))
        undo.push_async_callback(runtime.aclose)
        undo.push_async_callback(cleanup, runtime, [ack_bot, *bots])
        client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=TURN_LIMIT_S)
        )
        undo.push_async_callback(client.close)
        stack = Stack(logs / "config.yaml", logs, client, runtime)
        undo.push_async_callback(stack.stop)
        receipts = Receipts()
        undo.push_async_callback(stop_task, asyncio.create_task(receipts.follow(client, double_url)))
        await asyncio.wait_for(receipts.ready.wait(), START_LIMIT_S)
        async with asyncio.timeout(RUN_LIMIT_S):
            results = await measure(stack, receipts, ack_bot, bots, wrk, double)
    print(results.table())
    print()
    print(f"{results.cpu_note()} Load average (1 min) before the run: {load_before:.2f}.")
    print(results.last_line())
    counts = results.counts
    return 1 if counts.lost or counts.duplicated or counts.reordered else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__.split("\n")[0])
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                        help="load generator of the acknowledgement check (auto: wrk, else python)")  # fmt: skip
    sub = parser.add_subparsers(dest="mode")
    double = sub.add_parser("double", help="run the Telegram double with its receipt stream (used by the bench)")
    double.add_argument("--token", action="append", required=True)
    args = parser.parse_args(argv)
    if args.mode == "double":
        run_double(args.token)
        return 0
    try:
        return asyncio.run(run(args))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
    except TimeoutError:
        print(f"bench failed: the run took longer than {RUN_LIMIT_S} s", file=sys.stderr)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench interrupted (its processes and data are cleaned up)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
