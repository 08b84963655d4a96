"""The HTTP server (FastAPI): provider webhooks, the web chat, health and metrics.

Routes::

    POST /webhooks/telegram/{tenant}    GET + POST /webhooks/whatsapp/{tenant}    POST /webhooks/vk/{tenant}
    POST /webhooks/calcom/{tenant}      (cal.com's booking events: bot.booking.calcom_webhooks)
    GET  /chat/{tenant}                 POST /chat/{tenant}/messages              GET /chat/{tenant}/messages
    POST /chat/{tenant}/voice           (a recorded voice note: the audio file as the body)
    GET  /health                        GET  /health/ready                        GET /metrics

A webhook is verified with the URL's tenant's secret, parsed, and each message handed to
:meth:`bot.ingest.Ingest.accept` (one Redis round trip); the work happens in a drain (see :mod:`bot.worker`).
Input errors never give a 500:

=====================================================  ==========================================
malformed body, bad query                              400
Telegram secret header wrong or missing                401
WhatsApp ``X-Hub-Signature-256`` wrong or missing      401 (the GET handshake's wrong token: 403)
cal.com ``X-Cal-Signature-256`` wrong or missing       401
VK ``secret`` wrong (or another community's event)     403 (VK puts the secret in the body)
unknown tenant, channel not configured for the tenant  404
body over 1 MB (``Content-Length`` or streamed)        413
body not received within 10 s (trickled)               408 (:mod:`bot.web.bodydeadline`)
update type we do not handle                           200, ignored
Redis unreachable                                      503 (the provider redelivers later)
=====================================================  ==========================================
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from redis.exceptions import RedisError
from sqlalchemy import text

from bot import metrics
from bot.booking import calcom_webhooks
from bot.exceptions import ChannelNotConfigured
from bot.ingest import Accepted, InProcess
from bot.runtime import Runtime
from bot.sender import Sender
from bot.settings import Settings
from bot.web.bodydeadline import BODY_TIMEOUT_S, BodyDeadline, BodyTimeout
from bot.web.webchat import MAX_WAIT_S
from bot.worker import Services, freeze_startup_objects
from channels import web
from channels.base import Channel, InboundMessage
from channels.exceptions import BadPayload, BadSignature
from channels.whatsapp import WhatsAppChannel

log = logging.getLogger(__name__)
T = TypeVar("T")

CHAT_TOKEN_HEADER = "X-Chat-Token"
MAX_BODY = 1024 * 1024
READY_TIMEOUT_S = 2.0
BAD_SIGNATURE_STATUS = {"telegram": 401, "whatsapp": 401, "vk": 403}
_USER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_MAX_AFTER = 2**62  # an outbox index; larger ones are no index Redis could hold
_PAGE = (Path(__file__).parent / "static" / "chat.html").read_text(encoding="utf-8")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_FAVICON = (Path(__file__).parent / "static" / "favicon.svg").read_bytes()


def _chat_page(fills: dict[str, str]) -> str:
    """The chat page with its ``{{placeholders}}`` filled, HTML-escaped, in one pass."""
    return _PLACEHOLDER.sub(lambda m: html.escape(fills[m[1]]), _PAGE)


class _Refused(Exception):
    """A request refused with ``status`` (never logged as an error: it is the client's mistake)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class _State:
    services: Services | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # set: open long polls answer now

    def require(self) -> Services:
        """The services, or a 503 while the app starts up."""
        if self.services is None:
            raise _Refused(503, "starting up")
        return self.services


def drains_in_process(settings: Settings, in_process: bool | None) -> bool:
    """Whether this server drains conversations itself: asked for, or by default in embedded mode (no Redis
    URL, so no separate worker could share the embedded Redis)."""
    return settings.redis_url is None if in_process is None else in_process


def create_app(
    settings: Settings,
    *,
    services: Services | None = None,
    in_process: bool | None = None,
    body_timeout_s: float = BODY_TIMEOUT_S,
) -> FastAPI:
    """The app. Without ``services`` it starts its own :class:`Runtime` on startup (closed on shutdown);
    ``in_process`` (default: embedded mode, i.e. no ``redis_url``) runs drains in this process;
    ``body_timeout_s``: how long a request body may take to arrive."""
    state = _State(services)
    run_in_process = drains_in_process(settings, in_process)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = state.services is None
        if owned:
            state.services = Services.build(await Runtime.start(settings), in_process=run_in_process)
        await _start(state)
        try:
            yield
        finally:
            await _stop(state, owned)

    app = FastAPI(title="bookingbot", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyDeadline, seconds=body_timeout_s)
    app.add_exception_handler(BodyTimeout, _body_timeout)
    app.state.stop_long_polls = state.stopping.set  # called by `serve` on SIGINT / SIGTERM
    _webhook_routes(app, state)
    _chat_routes(app, state)
    _ops_routes(app, state)
    _staff_routes(app, state)
    return app


async def _start(state: _State) -> None:
    services = state.require()
    # Not awaited: the server answers webhooks (and /health/ready its 503) even while Redis is down.
    state.tasks.append(asyncio.create_task(services.webchat.listen()))
    scheduler = services.ingest.scheduler
    if isinstance(scheduler, InProcess):
        sender = Sender(services.runtime.redis, services.channels.outlet)  # embedded: no arq to run reminders
        state.tasks.append(asyncio.create_task(services.runtime.reminders.loop(services.runtime, sender)))
        recovered = await scheduler.recover(services.runtime.redis, list(services.runtime.tenants))
        if recovered:
            log.info("restarted %d drains left scheduled by a previous run", recovered)


async def _stop(state: _State, owned: bool) -> None:
    for task in state.tasks:
        task.cancel()
    await asyncio.gather(*state.tasks, return_exceptions=True)
    state.tasks.clear()
    if owned and state.services is not None:
        await state.services.aclose()
        await state.services.runtime.aclose()
        state.services = None


def _refusal(exc: _Refused) -> Response:
    return JSONResponse({"error": exc.detail}, status_code=exc.status)


def _storage_down(what: str, exc: RedisError) -> Response:
    """Redis failed under a request: the client retries later (providers redeliver, the chat page polls again)."""
    log.error("%s, Redis failed: %s", what, exc)
    return _refusal(_Refused(503, "storage unavailable, retry later"))


async def _body_timeout(_request: Request, exc: Exception) -> Response:
    return _refusal(_Refused(408, str(exc)))


async def _read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and not (declared.isascii() and declared.isdigit()):
        raise _Refused(400, "bad Content-Length")
    too_large = "body over 1 MB" if limit == MAX_BODY else f"body over {limit:,} bytes"
    if declared is not None and (len(declared) > len(str(limit)) or int(declared) > limit):
        raise _Refused(413, too_large)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refused(413, too_large)
        chunks.append(chunk)
    return b"".join(chunks)


def _adapter(services: Services, tenant: str, channel: str) -> Channel:
    try:
        return services.channels.webhook(tenant, channel)
    except ChannelNotConfigured as exc:
        raise _Refused(404, str(exc)) from None


async def _accept_webhook(state: _State, request: Request, channel: str) -> Response:
    services = state.require()
    tenant = request.path_params["tenant"]
    if channel == calcom_webhooks.CHANNEL:
        return await _accept_calcom(services, request, tenant)
    adapter = _adapter(services, tenant, channel)
    body = await _read_body(request)
    try:
        adapter.verify(request.headers, body)
        parsed = adapter.parse(tenant, body)
    except BadSignature as exc:
        raise _Refused(BAD_SIGNATURE_STATUS[channel], str(exc)) from None
    except BadPayload as exc:
        raise _Refused(400, str(exc)) from None
    for msg in parsed.messages:
        outcome = await services.ingest.accept(msg)
        metrics.INGESTED.labels(channel, outcome.name.lower()).inc()
    return PlainTextResponse(parsed.reply or "ok")


async def _accept_calcom(services: Services, request: Request, tenant: str) -> Response:
    """A cal.com webhook: the tenant's webhook secret, then the same ingest as a chat message."""
    cfg = services.runtime.settings.tenants.get(tenant)
    calcom = cfg.booking.calcom if cfg is not None and cfg.booking.backend == "calcom" else None
    if calcom is None:
        raise _Refused(404, f"tenant {tenant!r} does not book through cal.com")
    body = await _read_body(request)
    try:
        calcom_webhooks.verify(calcom.webhook_secret, request.headers, body)
        msg = calcom_webhooks.parse(tenant, body)
    except BadSignature as exc:
        raise _Refused(401, str(exc)) from None
    except BadPayload as exc:
        raise _Refused(400, str(exc)) from None
    if msg is not None:
        outcome = await services.ingest.accept(msg)
        metrics.INGESTED.labels(calcom_webhooks.CHANNEL, outcome.name.lower()).inc()
    return PlainTextResponse("ok")


def _webhook_routes(app: FastAPI, state: _State) -> None:
    """Plain Starlette routes: the fast path skips FastAPI's parameter machinery (microseconds count)."""

    def endpoint(channel: str) -> Callable[[Request], Awaitable[Response]]:
        async def receive(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await _accept_webhook(state, request, channel)
            except _Refused as exc:
                response = _refusal(exc)
            except RedisError as exc:
                response = _storage_down(f"webhook {channel} not accepted", exc)
            metrics.WEBHOOKS.labels(channel, str(response.status_code)).inc()
            metrics.ACK_SECONDS.labels(channel).observe(time.perf_counter() - started)
            return response

        return receive

    async def whatsapp_handshake(request: Request) -> Response:
        try:
            adapter = _adapter(state.require(), request.path_params["tenant"], "whatsapp")
            assert isinstance(adapter, WhatsAppChannel)
            return PlainTextResponse(adapter.verify_subscription(request.query_params))
        except _Refused as exc:
            return _refusal(exc)
        except BadSignature as exc:
            return _refusal(_Refused(403, str(exc)))
        except BadPayload as exc:
            return _refusal(_Refused(400, str(exc)))

    for channel in ("telegram", "whatsapp", "vk"):
        app.router.add_route(f"/webhooks/{channel}/{{tenant}}", endpoint(channel), methods=["POST"])
    app.router.add_route("/webhooks/calcom/{tenant}", endpoint(calcom_webhooks.CHANNEL), methods=["POST"])
    app.router.add_route("/webhooks/whatsapp/{tenant}", whatsapp_handshake, methods=["GET"])


def _chat_routes(app: FastAPI, state: _State) -> None:
    def known(tenant: str) -> Services:
        services = state.require()
        if tenant not in services.runtime.tenants:
            raise _Refused(404, f"unknown tenant {tenant!r}")
        return services

    @app.get("/chat/{tenant}", response_class=HTMLResponse)
    async def page(tenant: str) -> Response:
        try:
            services = known(tenant)
        except _Refused as exc:
            return _refusal(exc)
        cfg = services.runtime.settings.tenants[tenant]
        try:
            user_id, token = await services.webchat.identity(tenant)
        except RedisError as exc:
            return _storage_down("web chat page not served", exc)
        fills = {"name": cfg.name, "tenant": tenant, "locale": cfg.locale, "user_id": user_id, "token": token}
        return HTMLResponse(_chat_page(fills), headers={"Cache-Control": "no-store"})

    @app.post("/chat/{tenant}/messages")
    async def post_message(tenant: str, request: Request) -> Response:
        try:
            services = known(tenant)
            try:
                parsed = web.parse(tenant, await _read_body(request))
            except BadPayload as exc:
                raise _Refused(400, str(exc)) from None
            msg = parsed.messages[0]
            await _authorize(services, request, tenant, msg.user_id)
            return await _web_accepted(services, msg)
        except _Refused as exc:
            return _refusal(exc)
        except RedisError as exc:
            return _storage_down("web chat message not accepted", exc)

    @app.post("/chat/{tenant}/voice")
    async def post_voice(tenant: str, request: Request) -> Response:
        """A voice note recorded on the page: kept in Redis, then a message that refers to it is ingested."""
        try:
            services = known(tenant)
            user_id, event_id, mime = _voice_params(request)
            await _authorize(services, request, tenant, user_id)
            audio = await _read_body(request, services.runtime.settings.voice.max_bytes)
            if not audio:
                raise _Refused(400, "empty body: send the recorded audio file")
            media_id = await services.webchat.keep_media(tenant, audio)
            msg = web.voice_message(tenant, user_id, event_id, media_id, mime)
            return await _web_accepted(services, msg)
        except _Refused as exc:
            return _refusal(exc)
        except RedisError as exc:
            return _storage_down("web chat voice note not accepted", exc)

    @app.get("/chat/{tenant}/messages")
    async def get_messages(tenant: str, request: Request) -> Response:
        try:
            services = known(tenant)
            user_id, after, wait_s = _poll_params(request)
            await _authorize(services, request, tenant, user_id)
            replies = await _unless_stopping(state, services.webchat.wait(tenant, user_id, after, wait_s))
        except _Refused as exc:
            return _refusal(exc)
        except RedisError as exc:
            return _storage_down("web chat poll failed", exc)
        last = replies[-1].index if replies else after
        return JSONResponse({"replies": [r.model_dump() for r in replies], "last": last})


async def _web_accepted(services: Services, msg: InboundMessage) -> Response:
    """Ingest a web chat message (typed or a voice note): 202, and whether it was one the server already had."""
    outcome = await services.ingest.accept(msg)
    metrics.INGESTED.labels("web", outcome.name.lower()).inc()
    return JSONResponse({"event_id": msg.event_id, "duplicate": outcome is Accepted.DUPLICATE}, status_code=202)


async def _unless_stopping(state: _State, waiting: Coroutine[Any, Any, list[T]]) -> list[T]:
    """A long poll's replies, or none as soon as the server is stopping: the page simply polls again, so a
    shutdown neither waits for every open poll nor cancels them half-way (tracebacks, 500s)."""
    poll, stop = asyncio.ensure_future(waiting), asyncio.ensure_future(state.stopping.wait())
    try:
        await asyncio.wait({poll, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (poll, stop):
            task.cancel()
        await asyncio.gather(poll, stop, return_exceptions=True)
    return poll.result() if poll.done() and not poll.cancelled() else []


async def _authorize(services: Services, request: Request, tenant: str, user_id: str) -> None:
    """A web chat call must carry the token the page was served with for this ``user_id``."""
    if not await services.webchat.authorized(tenant, user_id, request.headers.get(CHAT_TOKEN_HEADER)):
        raise _Refused(401, f"missing or wrong {CHAT_TOKEN_HEADER} for this user_id")


def _voice_params(request: Request) -> tuple[str, str | None, str]:
    user_id = request.query_params.get("user_id", "")
    event_id = request.query_params.get("event_id")
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not _USER_ID.match(user_id):
        raise _Refused(400, "user_id: 1-64 of A-Z a-z 0-9 _ . : -")
    if event_id is not None and not _USER_ID.match(event_id):
        raise _Refused(400, "event_id: 1-64 of A-Z a-z 0-9 _ . : -")
    if not mime.startswith(("audio/", "video/webm")):  # browsers label recorded WebM audio either way
        raise _Refused(415, "Content-Type must be the recording's audio type, e.g. audio/webm or audio/ogg")
    return user_id, event_id, mime


def _poll_params(request: Request) -> tuple[str, int, float]:
    params = request.query_params
    user_id = params.get("user_id", "")
    if not _USER_ID.fullmatch(user_id):
        raise _Refused(400, "user_id: 1-64 of A-Z a-z 0-9 _ . : -")
    try:
        after = int(params.get("after", "0"))
        wait_s = float(params.get("wait", str(MAX_WAIT_S)))
    except ValueError:
        raise _Refused(400, "after must be an integer and wait a number of seconds") from None
    if not 0 <= after <= _MAX_AFTER or not 0 <= wait_s <= MAX_WAIT_S:
        raise _Refused(400, f"after must be >= 0 and wait within 0-{MAX_WAIT_S:g}")
    return user_id, after, wait_s


def _staff_routes(app: FastAPI, state: _State) -> None:
    @app.get("/staff/{tenant}", response_class=HTMLResponse)
    async def staff(tenant: str, request: Request) -> Response:
        from bot.web.staff import StaffRefused, staff_page

        try:
            page = await staff_page(state.require().runtime, tenant, request.query_params.get("token"))
        except _Refused as exc:
            return _refusal(exc)
        except StaffRefused as exc:
            return _refusal(_Refused(exc.status, str(exc)))
        return HTMLResponse(page, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


def _ops_routes(app: FastAPI, state: _State) -> None:
    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(_FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/", response_class=HTMLResponse)
    async def index() -> Response:
        """In embedded (demo) mode, the web chats to try; a production server has no public index."""
        services = state.services
        if services is None or services.runtime.settings.redis_url:
            return _refusal(_Refused(404, "nothing here: see /chat/<tenant>"))
        links = "".join(
            f'<li><a href="chat/{html.escape(t)}">{html.escape(cfg.name)}</a> ({html.escape(cfg.locale)})</li>'
            for t, cfg in services.runtime.settings.tenants.items()
        )
        return HTMLResponse(
            '<!doctype html><html><head><meta charset="utf-8"><title>bookingbot demo</title>'
            '<link rel="icon" href="favicon.ico"></head><body><h1>bookingbot demo</h1>'
            f"<p>Web chats of the configured tenants:</p><ul>{links}</ul></body></html>"
        )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready() -> Response:
        checks = {"redis": "ok", "database": "ok"}
        services = state.services
        if services is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await asyncio.wait_for(services.runtime.redis.ping(), READY_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as exc:
            checks["redis"] = f"down: {exc!r}"
        try:
            async with asyncio.timeout(READY_TIMEOUT_S), services.runtime.db.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # any driver error means "not ready"; the detail goes to the operator
            checks["database"] = f"down: {exc!r}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "down", **checks}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        if state.services is not None:
            await metrics.observe_outbox(state.services.runtime.outbox)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)


async def serve(settings: Settings, *, host: str, port: int, in_process: bool | None = None) -> int:
    """``bookingbot serve``: uvicorn on ``host:port`` until SIGINT / SIGTERM (see :mod:`bot.lifecycle`)."""
    import uvicorn

    from bot.lifecycle import PortBusy, listen, serve_forever

    try:
        sock = listen(host, port)
    except PortBusy as exc:
        print(exc, file=sys.stderr)
        return 1
    run_in_process = drains_in_process(settings, in_process)
    try:
        services = Services.build(await Runtime.start_when_reachable(settings), in_process=run_in_process)
    except BaseException:
        sock.close()
        raise
    app = create_app(settings, services=services)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    mode = "drains in this process" if run_in_process else "drains by `bookingbot worker`"
    # Web chat long-polls (up to 25 s) would otherwise hold a shutdown for their whole wait.
    config = uvicorn.Config(
        app, host=host, port=port, access_log=False, log_level="warning", timeout_graceful_shutdown=3
    )
    freeze_startup_objects()  # after the runtime and tenants are built: they are long-lived too
    try:
        print(f"bookingbot on http://{shown}:{port} ({mode}); Ctrl-C stops", flush=True)
        for tenant in settings.tenants:
            print(f"  web chat of {tenant}: http://{shown}:{port}/chat/{tenant}", flush=True)
        await serve_forever(config, sock, on_stop=app.state.stop_long_polls)
    finally:
        sock.close()
        await services.aclose()
        await services.runtime.aclose()
    return 0
