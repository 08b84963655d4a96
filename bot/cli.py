"""``bookingbot`` command line (also ``python -m bot``). DESIGN section 5 lists the commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.exceptions import ConfigError

if TYPE_CHECKING:
    from bot.settings import Settings

# A command returns its exit status, or a coroutine giving it when it needs the event loop (importing asyncio
# and uvloop is a measurable part of a short command's start-up).
Command = Callable[[argparse.Namespace], int | Coroutine[Any, Any, int]]


# Each command imports what it needs when it runs: `bookingbot --help` loads no pydantic model, YAML parser
# or SDK (see bench/cli.py).


def _settings(args: argparse.Namespace) -> Settings:
    from bot.config import config_path, load_config

    return load_config(config_path(args.config))


def _now(value: str | None) -> datetime:
    moment = datetime.fromisoformat(value) if value else datetime.now(UTC)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"--now {value!r} needs a UTC offset, e.g. 2026-11-23T09:00:00+00:00")
    return moment


def cmd_check_config(args: argparse.Namespace) -> int:
    from bot.config import check_config, config_path

    problems = check_config(config_path(args.config))
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{config_path(args.config)}: ok")
    return 1 if problems else 0


def cmd_extract(args: argparse.Namespace) -> int:
    from bot.profile import tenant_profile
    from dialogs.extract import ExtractContext, extract_all

    settings = _settings(args)
    if args.tenant not in settings.tenants:
        print(f"unknown tenant {args.tenant!r} (configured: {', '.join(settings.tenants)})", file=sys.stderr)
        return 2
    profile = tenant_profile(args.tenant, settings.tenants[args.tenant])
    ctx = ExtractContext(
        now=_now(args.now),
        tz=profile.tz,
        locale=profile.locale,
        services=profile.services,
        default_region=profile.default_region,
    )
    print(json.dumps(extract_all(args.text, ctx), ensure_ascii=False))
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    from dialogs.graph import to_dot, to_mermaid
    from dialogs.loader import builtin_template

    settings = _settings(args)
    if args.tenant not in settings.tenants:
        print(f"unknown tenant {args.tenant!r} (configured: {', '.join(settings.tenants)})", file=sys.stderr)
        return 2
    template = builtin_template(settings.tenants[args.tenant].dialog.template)
    if args.format == "mermaid":
        print(to_mermaid(template))
        return 0
    dot = shutil.which("dot")
    if dot is None:
        print(
            "--format svg needs Graphviz (`dot`); install it (apt-get install graphviz) or use mermaid", file=sys.stderr
        )
        return 2
    svg = subprocess.run([dot, "-Tsvg"], input=to_dot(template), capture_output=True, text=True, check=True)
    sys.stdout.write(svg.stdout)
    return 0


async def cmd_chat(args: argparse.Namespace) -> int:
    from bot.devtools.terminal import chat

    return await chat(
        _settings(args),
        tenant=args.tenant,
        channel=args.channel,
        user=args.user,
        now=_now(args.now) if args.now else None,
    )


async def cmd_reminders(args: argparse.Namespace) -> int:
    from bot.reminders import listing

    return await listing(_settings(args), args.tenant)


async def cmd_replay(args: argparse.Namespace) -> int:
    from bot.devtools.replay import Replayer, update_fixture
    from bot.runtime import Runtime

    paths = _fixture_paths(args.paths)
    if not paths:
        print("no fixtures found in " + " ".join(args.paths), file=sys.stderr)
        return 2
    runtime = await Runtime.start(_settings(args))
    counts = {"passed": 0, "failed": 0, "pending": 0}
    try:
        replayer = Replayer(runtime)
        for path in paths:
            result = await replayer.run(path)
            if args.update and result.observed:
                update_fixture(path, result)
            verdict = "passed" if args.update else result.verdict
            if verdict == "fixed":
                print(f"FIXED {path}: it passes now, remove its `pending:`", file=sys.stderr)
                verdict = "failed"
            elif verdict == "failed":
                print(f"FAIL {path}", file=sys.stderr)
                for failure in result.failures:
                    print(f"  {failure}", file=sys.stderr)
            counts[verdict] += 1
    finally:
        await runtime.aclose()
    pending = f", {counts['pending']} pending" if counts["pending"] else ""
    print(f"{counts['passed']} passed, {counts['failed']} failed{pending}")
    return 1 if counts["failed"] else 0


def _fixture_paths(items: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        paths.extend(sorted(path.rglob("*.yaml")) if path.is_dir() else [path])
    return paths


async def cmd_export(args: argparse.Namespace) -> int:
    from bot.devtools.export import export_fixture
    from bot.runtime import Runtime

    settings = _settings(args)
    tenant, _, conversation = args.conversation.rpartition("/")
    tenant = tenant or args.tenant or next(iter(settings.tenants))
    runtime = await Runtime.start(settings)
    try:
        text = await export_fixture(runtime, tenant, conversation)
    finally:
        await runtime.aclose()
    if text is None:
        print(f"no messages logged for conversation {conversation!r} of tenant {tenant!r}", file=sys.stderr)
        return 1
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


async def cmd_usage(args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfo

    from bot import db
    from bot.assist.usage import render, usage_lines
    from bot.runtime import database_url

    settings = _settings(args)
    if args.tenant not in settings.tenants:
        print(f"unknown tenant {args.tenant!r} (configured: {', '.join(settings.tenants)})", file=sys.stderr)
        return 2
    tz = ZoneInfo(settings.tenants[args.tenant].timezone)
    month = args.month or datetime.now(tz).strftime("%Y-%m")
    url = database_url(settings)
    await db.migrate(url)
    engine = db.make_engine(url)
    try:
        lines = await usage_lines(engine, args.tenant, tz, month)
    except ValueError as exc:
        print(f"bookingbot: {exc}", file=sys.stderr)
        return 2
    finally:
        await engine.dispose()
    print(render(args.tenant, month, lines))
    return 0


async def cmd_serve(args: argparse.Namespace) -> int:
    from bot.web.server import serve

    in_process = True if args.workers_inprocess else None
    return await serve(_settings(args), host=args.host, port=args.port, in_process=in_process)


async def cmd_worker(args: argparse.Namespace) -> int:
    if args.check:
        from bot.ops.heartbeat import check

        return await check(_settings(args))
    from bot.worker import run_worker

    return await run_worker(_settings(args))


async def cmd_outbox(args: argparse.Namespace) -> int:
    from bot import db
    from bot.crm.outbox import Outbox, describe
    from bot.runtime import database_url

    url = database_url(_settings(args))
    await db.migrate(url)
    engine = db.make_engine(url, pool_size=1)
    try:
        outbox = Outbox(engine)
        if args.action == "retry":
            print(f"{await outbox.retry_failed(args.tenant)} failed rows queued again")
            return 0
        rows = await outbox.open_rows(args.tenant)
    finally:
        await engine.dispose()
    for row in rows:
        print(describe(row))
    print(f"{sum(r.status == 'pending' for r in rows)} pending, {sum(r.status == 'failed' for r in rows)} failed")
    return 0
async def cmd_poll(args: argparse.Namespace) -> int:
    from bot.poll import poll

    return await poll(_settings(args), args.tenant, in_process=True if args.workers_inprocess else None)


async def cmd_bookings(args: argparse.Namespace) -> int:
    from bot.runtime import Runtime
    from bot.web.staff import print_bookings

    runtime = await Runtime.start(_settings(args))
    try:
        runtime.tenant(args.tenant)  # ConfigError for an unknown tenant
        return await print_bookings(runtime, args.tenant, args.day, args.week)
    finally:
        await runtime.aclose()


async def cmd_deadletters(args: argparse.Namespace) -> int:
    from bot.ops.deadletters import dead_letters, retry
    from bot.runtime import Runtime
    from bot.worker import Services

    settings = _settings(args)
    tenants = [args.tenant] if args.tenant else list(settings.tenants)
    runtime = await Runtime.start(settings)
    # Without a worker (embedded mode) this process drains what it sends through again.
    services = Services.build(runtime, in_process=not settings.redis_url)
    try:
        for tenant in tenants:
            for letter in await dead_letters(runtime.redis, tenant):
                if args.action == "list":
                    print(letter.line())
                else:
                    print(f"{await retry(services, letter)}: {letter.line()}")
        await services.idle()
    finally:
        await services.aclose()
        await runtime.aclose()
    return 0


async def cmd_set_webhooks(args: argparse.Namespace) -> int:
    from bot.channelset import set_webhooks

    return await set_webhooks(_settings(args), args.base_url, tenant=args.tenant)


async def cmd_handoff(args: argparse.Namespace) -> int:
    from bot.runtime import Runtime

    if args.action == "resume" and not args.conversation:
        print("handoff resume needs --conversation channel:user", file=sys.stderr)
        return 2
    runtime = await Runtime.start(_settings(args))
    try:
        tenant = runtime.tenant(args.tenant)
        assert tenant.desk is not None, "the runtime gives every tenant a desk"
        if args.action == "resume":
            resumed = await tenant.desk.resume(tenant.id, args.conversation, tenant.engine.template)
            print("resumed" if resumed else f"{args.conversation} is not handed off")
            return 0 if resumed else 1
        for n in await tenant.desk.open_handoffs(tenant.id):
            told = "notified" if n.notified else "NOT notified"
            print(f"{n.since:%Y-%m-%d %H:%M} {n.conversation} customer={n.customer} reason={n.reason} {told}")
    finally:
        await runtime.aclose()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bookingbot", description="booking-bot engine")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="config file (default: $BOOKINGBOT_CONFIG or ./config.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Command, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_)
        p.set_defaults(func=func)
        return p

    command("check-config", cmd_check_config, "validate config and dialogs")
    p = command("extract", cmd_extract, "print the slots found in a text, as JSON")
    p.add_argument("--tenant", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--now", help="ISO time with offset (default: now)")
    p = command("graph", cmd_graph, "draw a tenant's dialog as a state diagram")
    p.add_argument("--tenant", required=True)
    p.add_argument("--format", choices=["mermaid", "svg"], default="mermaid")
    p = command("chat", cmd_chat, "talk to the engine in the terminal")
    p.add_argument("--tenant", default="demo")
    p.add_argument("--channel", default="terminal", choices=["terminal", "telegram", "whatsapp", "vk", "web"])
    p.add_argument("--user", help="continue this user's conversation (default: a new one)")
    p.add_argument("--now", help="freeze the clock at this ISO time with offset")
    p = command("reminders", cmd_reminders, "list a tenant's scheduled reminders")
    p.add_argument("--tenant", required=True)
    p = command("replay", cmd_replay, "run conversation fixtures")
    p.add_argument("paths", nargs="+")
    p.add_argument("--update", action="store_true", help="rewrite expectations from current behaviour")
    p = command("handoff", cmd_handoff, "list conversations handed off to a person, or give one back to the bot")
    p.add_argument("action", choices=["list", "resume"])
    p.add_argument("--tenant", required=True)
    p.add_argument("--conversation", help="channel:user (for resume)")
    p = command("export", cmd_export, "write a logged conversation as a replay fixture")
    p.add_argument("--conversation", required=True, help="[tenant/]channel:user")
    p.add_argument("--tenant")
    p.add_argument("--out", help="file to write (default: stdout)")
    p = command("usage", cmd_usage, "print a tenant's LLM token spend by day, purpose and model")
    p.add_argument("--tenant", required=True)
    p.add_argument("--month", help="YYYY-MM (default: this month in the tenant's timezone)")
    p = command("serve", cmd_serve, "run the webhook server and the web chat")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers-inprocess", action="store_true",
                   help="run drains in this process (always so without redis_url)")
    p = command("outbox", cmd_outbox, "list pending and failed CRM outbox rows, or queue failed ones again")
    p.add_argument("action", nargs="?", choices=["list", "retry"], default="list")
    p.add_argument("--tenant", help="only this tenant (default: all)")
    p = command("poll", cmd_poll, "talk to a tenant's Telegram / VK bot by long polling (no public URL needed)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--workers-inprocess", action="store_true",
                   help="run drains in this process (always so without redis_url)")
    p = command("worker", cmd_worker, "run the arq worker (drains: dialog turns and sends)")
    p.add_argument("--check", action="store_true", help="exit 0 iff a worker's heartbeat is fresh (health check)")
    p = command("bookings", cmd_bookings, "print a tenant's bookings of a day (default: today) or a week")
    p.add_argument("--tenant", required=True)
    when = p.add_mutually_exclusive_group()
    when.add_argument("--day", type=date.fromisoformat, help="YYYY-MM-DD (the tenant's local date)")
    when.add_argument("--week", action="store_true", help="the 7 days from today")
    p = command("deadletters", cmd_deadletters, "list inbound messages given up on, or send them through again")
    p.add_argument("action", nargs="?", choices=["list", "retry"], default="list")
    p.add_argument("--tenant", help="only this tenant (default: all)")
    p = command("set-webhooks", cmd_set_webhooks, "register the webhook URLs with Telegram, WhatsApp and VK")
    p.add_argument("--tenant", help="only this tenant (default: all)")
    p.add_argument("--base-url", required=True, help="public base URL of `bookingbot serve`")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        command: Command = args.func
        outcome = command(args)
        if isinstance(outcome, int):
            return outcome
        from bot.lifecycle import run

        return run(outcome)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except argparse.ArgumentTypeError as exc:
        print(f"bookingbot: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
