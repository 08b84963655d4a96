"""The channel adapters of every tenant, built once per process from ``bot.settings``.

A tenant has an adapter for each channel configured under its ``channels:`` key, and always the web chat
(whose outlet is the shared :class:`bot.webchat.WebChat`).
"""

from __future__ import annotations

import asyncio
import sys

from bot.exceptions import ChannelNotConfigured
from bot.sender import Outlet
from bot.settings import ChannelsConfig, Settings
from bot.webchat import WebChat
from channels.base import Channel
from channels.exceptions import SendError
from channels.telegram import TelegramChannel, TelegramSettings
from channels.vk import VKChannel, VKSettings
from channels.whatsapp import WhatsAppChannel, WhatsAppSettings


def build(config: ChannelsConfig) -> dict[str, Channel]:
    """The adapters for one tenant's configured webhook channels, by channel name."""
    built: dict[str, Channel] = {}
    if config.telegram is not None:
        built["telegram"] = TelegramChannel(TelegramSettings(**config.telegram.model_dump()))
    if config.whatsapp is not None:
        built["whatsapp"] = WhatsAppChannel(WhatsAppSettings(**config.whatsapp.model_dump()))
    if config.vk is not None:
        built["vk"] = VKChannel(VKSettings(**config.vk.model_dump()))
    return built


class ChannelSet:
    def __init__(self, settings: Settings, webchat: WebChat) -> None:
        self.webchat = webchat
        self._channels = {tenant: build(cfg.channels) for tenant, cfg in settings.tenants.items()}

    def webhook(self, tenant: str, channel: str) -> Channel:
        """The adapter receiving ``channel``'s webhooks for ``tenant``; ChannelNotConfigured if none."""
        try:
            return self._channels[tenant][channel]
        except KeyError:
            raise ChannelNotConfigured(f"{channel} is not configured for tenant {tenant!r}") from None

    def outlet(self, tenant: str, channel: str) -> Outlet:
        """Where replies on ``channel`` go for ``tenant`` (the web chat outbox for ``web``)."""
        if channel == "web":
            return self.webchat
        return self.webhook(tenant, channel)

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
        for name, channel in build(settings.tenants[tenant_id].channels).items():
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
