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
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.latency import percentile_ms
from bench.procstack import (
    START_LIMIT_S,
    BenchError,
    Bot,
    Counts,
    Dialog,
    Process,
    Receipts,
    Stack,
    check_chat,
    cleanup,
    expected_dialog,
    log,
    post_update,
    start_double,
    stop_task,
    tg_update,
    write_config,
)
from bot import keys
from bot.runtime import Runtime
from tests.doubles.telegram import SECRET_HEADER

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).with_suffix(".lua")
RUN_LIMIT_S = 170  # the whole run, cleanup excluded
CONNECTIONS = 50
ACK_SECONDS, ACK_WARMUP_SECONDS = 10, 2
ACK_CHATS, ACK_FIRST_CHAT = 5000, 700_000_000
ACK_TEXT = "Hi, can I get a haircut tomorrow?"  # also in bench/webhooks.lua
BOTS, CHATS_PER_BOT = 20, 10  # 200 concurrent conversations
READ_S_PER_REPLY = 1.0  # a human reads each reply; also Telegram's 1 message/s per chat
TURN_LIMIT_S = 10.0  # a turn's replies not at the double by then are lost
SETTLE_S = 1.5  # after the last expected reply: time for a duplicate to show up


def make_bots(run: str) -> tuple[Bot, list[Bot]]:
    """The acknowledgement tenant, and the tenants of the end-to-end checks."""
    bots = [Bot(f"bench-{run}-{k:02d}", f"{900_001 + k}:bench{run}", f"secret-{run}-{k}") for k in range(BOTS + 1)]
    return bots[-1], bots[:-1]


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
    args = parser.parse_args(argv)
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
