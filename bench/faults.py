"""Fault injection against real ``bookingbot serve`` + ``bookingbot worker`` processes (issue: crash safety).

Each scenario runs customers through the whole booking dialog (the 6 turns of ``bench/webhooks.py`` and a
final "yes", so every conversation ends with a booking) on tenants cloned from ``demo``, 10 chats per Telegram
bot, the real PostgreSQL, and messages posted back to back the way Telegram posts them: a webhook answered
with anything but 200 (or not answered) is posted again, with backoff. While the conversations are under way:

* ``kill``: two workers drain; when a quarter of the expected replies has reached the Telegram double, worker
  #1 is killed with SIGKILL (its process group: no clean-up of any kind). Worker #2 must finish its
  conversations.
* ``redis``: a Redis of the scenario's own (a ``redis-server`` on a free port, AOF ``appendfsync everysec``, in
  a temporary directory) is killed with SIGKILL at the same point and started again 1 s later on the same
  files. The server and the worker must survive and finish every conversation.

Then, after every expected reply arrived (or ``--limit`` seconds after the fault), it checks what reached
the double against the dialog's expected replies (``bench.procstack.check_chat``), the tenants' bookings and
the message log:

* ``lost``: replies that never arrived; ``stuck``: conversations not finished by the limit;
* ``duplicated``: replies that arrived twice (allowed only for a send in flight at the fault);
* ``recovery_s``: the longest wait, from the fault, for the next reply of a conversation left unfinished by it;
* ``bookings``: conversations whose booking is missing or was made twice; ``log``: inbound messages logged
  other than once.

Usage: ``python -m bench.faults [--scenario kill|redis] [--conversations 50]``; prints a table and last
``lost=N stuck=N duplicated=N recovery_s=X``. Exits 1 when anything was lost, stuck, double-booked or
double-logged, 2 when it could not measure. The crash tests run the same scenarios, smaller.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from sqlalchemy import func, select

from bench.procstack import (
    START_LIMIT_S,
    BenchError,
    Bot,
    Counts,
    Dialog,
    Process,
    Receipts,
    Stack,
    booking_turns,
    check_chat,
    cleanup,
    expected_dialog,
    free_port,
    log,
    start_double,
    stop_task,
    tg_update,
    write_config,
)
from bot.runtime import Runtime
from bot.tables import MESSAGES
from tests.doubles.telegram import SECRET_HEADER

CHATS_PER_BOT = 10
FAULT_AT = 0.25  # share of the expected replies received when the fault strikes
REDIS_DOWN_S = 1.0
POST_LIMIT_S = 60.0  # a webhook still refused after this long counts as lost (Telegram gives up too)


@dataclass
class Outcome:
    scenario: str
    conversations: int
    counts: Counts
    stuck: int
    recovery_s: float
    bookings_wrong: int  # conversations without exactly one booking
    log_wrong: int  # inbound messages logged other than once
    worst_duplicates: int  # the most replies one chat got twice (a send in flight at the fault: at most 1)
    refused_posts: int  # webhooks answered non-200 (and posted again)
    seconds: float

    @property
    def ok(self) -> bool:
        wrong = self.counts.lost + self.counts.reordered + self.stuck + self.bookings_wrong + self.log_wrong
        return wrong == 0 and self.worst_duplicates <= 1

    def row(self) -> str:
        c = self.counts
        return (
            f"| {self.scenario} | {self.conversations} | {c.lost} | {self.stuck} | {c.duplicated} | {c.reordered} "
            f"| {self.recovery_s:.1f} | {self.bookings_wrong} | {self.log_wrong} | {self.refused_posts} |"
        )

    def last_line(self) -> str:
        c = self.counts
        return f"lost={c.lost} stuck={self.stuck} duplicated={c.duplicated} recovery_s={self.recovery_s:.1f}"


TABLE_HEAD = (
    "| scenario | conversations | lost | stuck | duplicated | reordered | recovery s | bookings wrong "
    "| log wrong | webhooks re-posted |\n|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass(frozen=True)
class Chat:
    bot: Bot
    id: int
    dialog: Dialog  # each chat of a bot books its own hour, so every conversation ends booked


async def dialogs(runtime: Runtime, oracle: str) -> list[Dialog]:
    """The booking dialog at 10:00, 11:00, ... 19:00 (a haircut takes an hour; the salon closes at 20:00),
    from the pipeline on a tenant of its own (whose calendar the oracle fills)."""
    base = booking_turns(datetime.now(UTC))
    hours = [f"{10 + k}:00" for k in range(CHATS_PER_BOT)]
    turns = [[*base[:3], hour, *base[4:], "yes"] for hour in hours]
    return [await expected_dialog(runtime, oracle, t, user=str(k), expect=t[3]) for k, t in enumerate(turns)]


@dataclass
class Customers:
    """The scenario's chats and what they must receive."""

    stack: Stack
    receipts: Receipts
    chats: list[Chat]
    refused: int = 0
    update_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(4_000_000_000))

    @property
    def expected_total(self) -> int:
        return sum(len(chat.dialog.expected) for chat in self.chats)

    def received_total(self) -> int:
        return sum(len(self.receipts.texts[str(chat.id)]) for chat in self.chats)

    def finished(self, chat: Chat) -> bool:
        return len(self.receipts.texts[str(chat.id)]) >= len(chat.dialog.expected)

    async def converse(self, chat: Chat) -> None:
        url = self.stack.urls[0]
        for index, text in enumerate(chat.dialog.turns):
            await self.post(url, chat.bot, tg_update(next(self.update_ids), chat.id, index + 1, text))

    async def post(self, url: str, bot: Bot, body: bytes) -> None:
        """Post until the server answers 200, as Telegram does with a webhook that fails."""
        headers = {"Content-Type": "application/json", SECRET_HEADER: bot.secret}
        deadline, pause = time.monotonic() + POST_LIMIT_S, 0.1
        while time.monotonic() < deadline:
            with suppress(aiohttp.ClientError, TimeoutError):
                async with self.stack.client.post(
                    f"{url}/webhooks/telegram/{bot.tenant}", data=body, headers=headers
                ) as response:
                    if response.status == 200:
                        return
                    if response.status < 500:
                        raise BenchError(f"webhook refused with {response.status}: {await response.text()}")
            self.refused += 1
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)


# --- a Redis of the scenario's own, to kill ---------------------------------------------------------------------


@dataclass
class OwnRedis:
    """``redis-server`` with AOF (``appendfsync everysec``) on a free port, its files in ``directory``."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not installed")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no"]  # fmt: skip
        with (self.directory / "redis.log").open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline:
            with suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            await asyncio.sleep(0.05)
        raise BenchError(f"redis-server on port {self.port} did not start")

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


@asynccontextmanager
async def own_redis() -> AsyncIterator[OwnRedis]:
    with tempfile.TemporaryDirectory(prefix="faults-redis-") as directory:
        redis = OwnRedis(Path(directory))
        await redis.start()
        try:
            yield redis
        finally:
            await redis.kill()


# --- the run ------------------------------------------------------------------------------------------------


async def _checks(customers: Customers, runtime: Runtime) -> tuple[Counts, int, int, int]:
    counts, worst = Counts(), 0
    for chat in customers.chats:
        one = check_chat(chat.dialog.expected, customers.receipts.texts[str(chat.id)])
        counts, worst = counts + one, max(worst, one.duplicated)
    booked: Counter[str] = Counter()
    tenants = sorted({chat.bot.tenant for chat in customers.chats})
    for tenant in tenants:
        for booking in await runtime.tenant(tenant).calendar.active_bookings():
            booked[booking.customer] += 1
    conversations = [f"telegram:{chat.id}" for chat in customers.chats]
    bookings_wrong = sum(booked[conversation] != 1 for conversation in conversations)
    query = (
        select(MESSAGES.c.event_id, func.count())
        .where(MESSAGES.c.tenant.in_(tenants), MESSAGES.c.conversation.in_(conversations))
        .where(MESSAGES.c.direction == "in")
        .group_by(MESSAGES.c.tenant, MESSAGES.c.event_id)
    )
    async with runtime.db.connect() as conn:
        logged = {event: count for event, count in await conn.execute(query)}
    sent = sum(len(chat.dialog.turns) for chat in customers.chats)
    log_wrong = sum(n != 1 for n in logged.values()) + max(0, sent - len(logged))
    return counts, bookings_wrong, log_wrong, worst


async def _wait_until_done(customers: Customers, fault_at: float, limit: float) -> float:
    """Until every chat has all its replies (or ``limit`` s after the fault); the recovery time."""
    unfinished = [chat for chat in customers.chats if not customers.finished(chat)]
    seen = {chat.id: len(customers.receipts.texts[str(chat.id)]) for chat in unfinished}
    recovered: dict[int, float] = {}
    deadline = fault_at + limit
    while time.monotonic() < deadline:
        for chat in unfinished:
            times = customers.receipts.times[str(chat.id)]
            if chat.id not in recovered and len(times) > seen[chat.id]:
                recovered[chat.id] = times[seen[chat.id]] - fault_at
        if all(customers.finished(chat) for chat in customers.chats):
            break
        await asyncio.sleep(0.1)
    waits = [recovered.get(chat.id, time.monotonic() - fault_at) for chat in unfinished]
    return max(waits, default=0.0)


async def scenario(name: str, conversations: int, env: dict[str, str], *, limit: float = 60.0) -> Outcome:
    """Run one fault scenario (``kill`` or ``redis``) and check what came of it."""
    started = time.monotonic()
    run = uuid.uuid4().hex[:8]
    bots = [
        Bot(f"faults-{run}-{k:02d}", f"{910_001 + k}:faults{run}", f"secret-{run}-{k}")
        for k in range(math.ceil(conversations / CHATS_PER_BOT) + 1)
    ]  # the last: the oracle's
    async with AsyncExitStack() as undo:
        logs = Path(undo.enter_context(tempfile.TemporaryDirectory(prefix=f"faults-{name}-")))
        redis = await undo.enter_async_context(own_redis()) if name == "redis" else None
        if redis is not None:
            env = env | {"REDIS_URL": redis.url}
        double, double_url = await start_double([b.token for b in bots], logs)
        undo.push_async_callback(double.stop)
        runtime = await Runtime.start(write_config(env, bots, double_url, logs / "config.yaml"))
        undo.push_async_callback(runtime.aclose)
        undo.push_async_callback(cleanup, runtime, bots)
        client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        undo.push_async_callback(client.close)
        stack = Stack(logs / "config.yaml", logs, client, runtime)
        undo.push_async_callback(stack.stop)
        receipts = Receipts()
        undo.push_async_callback(stop_task, asyncio.create_task(receipts.follow(client, double_url)))
        await asyncio.wait_for(receipts.ready.wait(), START_LIMIT_S)
        await stack.add_server()
        victim = await stack.add_worker()
        if name == "kill":
            await stack.add_worker()
        hours = await dialogs(runtime, bots[-1].tenant)
        chats = [
            Chat(bots[n // CHATS_PER_BOT], 610_000_000 + n, hours[n % CHATS_PER_BOT]) for n in range(conversations)
        ]
        customers = Customers(stack, receipts, chats)
        posting = asyncio.gather(*(customers.converse(chat) for chat in chats))
        fault_at = await _strike(name, customers, victim, redis)
        recovery_s = await _wait_until_done(customers, fault_at, limit)
        await posting
        await asyncio.sleep(1.5)  # room for a late duplicate to show up
        for process in [*(s for s, _ in stack.servers), *stack.workers[1 if name == "kill" else 0 :]]:
            process.check_alive()  # nothing but the victim may have died
        counts, bookings_wrong, log_wrong, worst = await _checks(customers, runtime)
        stuck = sum(not customers.finished(chat) for chat in chats)
        return Outcome(name, conversations, counts, stuck, recovery_s, bookings_wrong, log_wrong, worst,
                       customers.refused, time.monotonic() - started)  # fmt: skip


async def _strike(name: str, customers: Customers, victim: Process, redis: OwnRedis | None) -> float:
    """Wait for the fault's moment and strike; returns when it struck (monotonic)."""
    while customers.received_total() < FAULT_AT * customers.expected_total:  # noqa: ASYNC110 - polls a counter
        await asyncio.sleep(0.02)
    fault_at = time.monotonic()
    if name == "kill":
        with suppress(ProcessLookupError):
            os.killpg(victim.proc.pid, signal.SIGKILL)
        log(f"killed the worker at {customers.received_total()}/{customers.expected_total} replies")
    else:
        assert redis is not None
        await redis.kill()
        log(f"killed Redis at {customers.received_total()}/{customers.expected_total} replies")
        await asyncio.sleep(REDIS_DOWN_S)
        await redis.start()
        log("Redis is back (AOF)")
    return fault_at


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=["kill", "redis"], action="append")
    parser.add_argument("--conversations", type=int, default=50)
    args = parser.parse_args(argv)
    env = {
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    }
    outcomes = []
    try:
        for name in args.scenario or ["redis", "kill"]:
            log(f"scenario {name}: {args.conversations} conversations")
            outcomes.append(asyncio.run(scenario(name, args.conversations, env)))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    print(TABLE_HEAD)
    for outcome in outcomes:
        print(outcome.row())
    print()
    print(outcomes[-1].last_line())
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
