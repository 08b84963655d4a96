"""The channel adapters of every tenant, built once per process from ``bot.settings``.

A tenant has an adapter for each channel configured under its ``channels:`` key, and always the web chat
(whose outlet is the shared :class:`bot.web.webchat.WebChat`).
"""

from __future__ import annotations

import asyncio
import sys

from bot.exceptions import ChannelNotConfigured
from bot.sender import Outlet
from bot.settings import Settings, TenantConfig
from bot.web.webchat import WebChat
from channels.base import Channel, InboundMessage
from channels.exceptions import SendError

# The label of WhatsApp's "open the list" button, in the tenant's language.
LIST_BUTTON = {"en": "Choose", "ru": "Выбрать"}


def build(tenant: TenantConfig) -> dict[str, Channel]:
    """The adapters for one tenant's configured webhook channels, by channel name. Each adapter module (and
    its SDK: aiogram costs seconds of CPU) is imported only when some tenant configures that channel."""
    config = tenant.channels
    built: dict[str, Channel] = {}
    if config.telegram is not None:
        from channels.telegram import TelegramChannel

        built["telegram"] = TelegramChannel(config.telegram)
    if config.whatsapp is not None:
        from channels.whatsapp import WhatsAppChannel

        built["whatsapp"] = WhatsAppChannel(config.whatsapp, list_button=LIST_BUTTON[tenant.locale])
    if config.vk is not None:
        from channels.vk import VKChannel

        built["vk"] = VKChannel(config.vk)
    return built


class ChannelSet:
    def __init__(self, settings: Settings, webchat: WebChat) -> None:
        self.webchat = webchat
        self._channels = {tenant: build(cfg) for tenant, cfg in settings.tenants.items()}

    def webhook(self, tenant: str, channel: str) -> Channel:
        """The adapter receiving ``channel``'s webhooks for ``tenant``; ChannelNotConfigured if none."""
        try:
            return self._channels[tenant][channel]
        except KeyError:
            raise ChannelNotConfigured(f"{channel} is not configured for tenant {tenant!r}") from None

    def of(self, tenant: str) -> dict[str, Channel]:
        """A tenant's configured provider adapters, by channel name (the web chat is not among them)."""
        return dict(self._channels.get(tenant, {}))

    def outlet(self, tenant: str, channel: str) -> Outlet:
        """Where replies on ``channel`` go for ``tenant`` (the web chat outbox for ``web``)."""
        if channel == "web":
            return self.webchat
        return self.webhook(tenant, channel)

    async def fetch_media(self, msg: InboundMessage) -> bytes:
        """The audio of ``msg``'s voice note, from its channel (the web chat keeps uploads in Redis)."""
        if msg.voice is None:
            raise ValueError("the message has no media")
        if msg.channel == "web":
            return await self.webchat.media(msg.tenant, msg.voice.id)
        return await self.webhook(msg.tenant, msg.channel).fetch_media(msg.voice)

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for chans in self._channels.values() for c in chans.values()))


WHATSAPP_MANUAL_STEP = (
    "WhatsApp: this sets the number's callback override; Meta delivers it only once the app is subscribed to "
    "the business account (POST /<WABA_ID>/subscribed_apps) and to the `messages` webhook field "
    "(App Dashboard > WhatsApp > Configuration) - both need an app or system-user token: do them once by hand."
)


async def set_webhooks(settings: Settings, base_url: str, *, tenant: str | None = None) -> int:
    """``bookingbot set-webhooks``: register ``{base_url}/webhooks/<channel>/<tenant>`` with each provider.
    Prints one line per registration; returns 1 if any failed, 2 for an unknown tenant."""
    if tenant is not None and tenant not in settings.tenants:
        print(f"unknown tenant {tenant!r} (configured: {', '.join(settings.tenants)})", file=sys.stderr)
        return 2
    failed = registered = 0
    for tenant_id in [tenant] if tenant else list(settings.tenants):
        for name, channel in build(settings.tenants[tenant_id]).items():
            url = f"{base_url.rstrip('/')}/webhooks/{name}/{tenant_id}"
            try:
                await channel.set_webhook(url)
            except SendError as exc:
                failed += 1
                print(f"{tenant_id} {name}: FAILED {url}: {exc}", file=sys.stderr)
            else:
                registered += 1
                print(f"{tenant_id} {name}: {url}")
                if name == "whatsapp":
                    print(f"  {WHATSAPP_MANUAL_STEP}")
            finally:
                await channel.aclose()
    if not failed and not registered:
        print("no telegram, whatsapp or vk channel is configured: nothing to register")
    return 1 if failed else 0
