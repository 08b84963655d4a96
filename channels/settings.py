"""Each channel adapter's settings: the keys under ``channels.<name>`` in config.yaml.

Kept apart from the adapters so that reading a config (every ``bookingbot`` command) does not import the
vendor SDKs: aiogram's types alone cost seconds of CPU to import.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TelegramSettings(BaseModel):
    """Same keys as ``channels.telegram`` in config.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: str = Field(pattern=r"^\d+:[A-Za-z0-9_-]+$")
    webhook_secret: str = Field(pattern=r"^[A-Za-z0-9_-]{1,256}$")  # Telegram's rule for secret_token
    api_base: str = "https://api.telegram.org"


class WhatsAppSettings(BaseModel):
    """Same keys as ``channels.whatsapp`` in config.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    phone_number_id: str
    access_token: str
    app_secret: str
    verify_token: str
    graph_base: str = "https://graph.facebook.com"
    graph_version: str = "v21.0"


class VKSettings(BaseModel):
    """Same keys as ``channels.vk`` in config.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    group_id: int
    access_token: str
    secret: str
    confirmation: str
    api_base: str = "https://api.vk.com/method"
    api_version: str = "5.199"
