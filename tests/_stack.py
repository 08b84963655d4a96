"""The server stack for the server and end-to-end tests (not a test module itself).

Two tenants cloned from config.yaml's ``demo`` under fresh ids, each with Telegram, WhatsApp and VK accounts
served by the provider doubles; the real app under uvicorn on a free loopback port, drains in process, the
real Redis and PostgreSQL. Tenant A uses the ids and secrets of ``fixtures/channels``; tenant B its own.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import uvicorn

from bot.config import load_config
from bot.ingest import InProcess
from bot.runtime import Runtime
from bot.settings import ChannelsConfig, Settings
from bot.web.server import create_app
from bot.worker import Services
from channels.settings import TelegramSettings, VKSettings, WhatsAppSettings
from tests.doubles.telegram import TelegramDouble
from tests.doubles.vk import VKDouble
from tests.doubles.whatsapp import WhatsAppDouble

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "channels"
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # a Monday, 09:00 in London: the salon opens at 10


@dataclass(frozen=True)
class Account:
    """One tenant's provider credentials (what config.yaml would hold)."""

    tg_token: str
    tg_secret: str
    wa_number: str
    wa_token: str
    wa_app_secret: str
    wa_verify: str
    vk_group: int
    vk_token: str
    vk_secret: str
    vk_confirmation: str


A = Account(
    "1001:tokenA",
    "tg-secret-A",
    "106540352242922",
    "wa-token-A",
    "wa-app-secret-A",
    "wa-verify-A",
    218412345,
    "vk-token-A",
    "vk-secret-1",
    "confirm-A",
)
B = Account(
    "1002:tokenB",
    "tg-secret-B",
    "106540352249999",
    "wa-token-B",
    "wa-app-secret-B",
    "wa-verify-B",
    218499999,
    "vk-token-B",
    "vk-secret-B",
    "confirm-B",
)


def fixture(channel: str, name: str, **changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / channel / f"{name}.json").read_text())
    return payload | changes


def channels(account: Account, tg: str, wa: str, vk: str) -> ChannelsConfig:
    return ChannelsConfig(
        telegram=TelegramSettings(token=account.tg_token, webhook_secret=account.tg_secret, api_base=tg),
        whatsapp=WhatsAppSettings(
            phone_number_id=account.wa_number,
            access_token=account.wa_token,
            app_secret=account.wa_app_secret,
            verify_token=account.wa_verify,
            graph_base=wa,
        ),
        vk=VKSettings(
            group_id=account.vk_group,
            access_token=account.vk_token,
            secret=account.vk_secret,
            confirmation=account.vk_confirmation,
            api_base=f"{vk}/method",
        ),
    )


@dataclass
class Stack:
    settings: Settings
    services: Services
    url: str
    telegram: TelegramDouble
    whatsapp: WhatsAppDouble
    vk: VKDouble
    a: str  # tenant ids
    b: str
    plain: str  # a tenant without webhook channels

    def hook(self, channel: str, tenant: str) -> str:
        return f"{self.url}/webhooks/{channel}/{tenant}"

    async def chat_auth(self, tenant: str, user: str) -> dict[str, str]:
        """The header the chat page sends for ``user`` (the token the server signs it with)."""
        return {"X-Chat-Token": await self.services.webchat.token(tenant, user)}

    async def idle(self) -> None:
        """Wait for every drain started so far (in process) to finish."""
        scheduler = self.services.ingest.scheduler
        assert isinstance(scheduler, InProcess)
        await asyncio.wait_for(scheduler.idle(), 30)

    def reset(self) -> None:
        for double in (self.telegram, self.whatsapp, self.vk):
            double.reset()
        self.telegram.sent.clear()
        self.telegram.answered.clear()


async def serve_app(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, f"http://127.0.0.1:{port}"


@asynccontextmanager
async def stack(env: dict[str, str], **drainer: Any) -> AsyncIterator[Stack]:
    """The whole stack; ``drainer``: Drainer options (the clock defaults to :data:`NOW`)."""
    base = load_config(ROOT / "config.yaml", env=env)
    demo = base.tenants["demo"]
    suffix = uuid4().hex[:10]
    a, b, plain = f"e2e-a-{suffix}", f"e2e-b-{suffix}", f"e2e-p-{suffix}"
    async with (
        TelegramDouble(A.tg_token, B.tg_token) as tg,
        WhatsAppDouble(A.wa_number, A.wa_token) as wa,
        VKDouble(A.vk_group, A.vk_token, A.vk_confirmation) as vk,
    ):
        wa.add_number(B.wa_number, B.wa_token)
        vk.add_group(B.vk_group, B.vk_token, B.vk_confirmation)
        tenants = {
            a: demo.model_copy(update={"channels": channels(A, tg.url, wa.url, vk.url)}),
            b: demo.model_copy(update={"channels": channels(B, tg.url, wa.url, vk.url)}),
            plain: demo,
        }
        settings = base.model_copy(update={"tenants": tenants})
        runtime = await Runtime.start(settings)
        services = Services.build(runtime, in_process=True, **({"clock": lambda: NOW} | drainer))
        server, task, url = await serve_app(create_app(settings, services=services))
        try:
            yield Stack(settings, services, url, tg, wa, vk, a, b, plain)
        finally:
            server.should_exit = True
            await task
            await services.aclose()
            for tenant in tenants:
                await runtime.drop_tenant(tenant)
            await runtime.aclose()
