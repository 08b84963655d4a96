"""The one exception tree of :mod:`channels`.

    ChannelError
    ├── BadPayload              the webhook body is not what the provider sends (-> HTTP 400)
    ├── BadSignature            bad signature / secret / verify token, or another tenant's (-> 401/403)
    └── SendError               a call to the provider (send, button ack, media fetch, webhook setup) failed
        ├── RetryLater          transient: rate limited, 5xx, timeout; ``retry_after``: seconds, if the
        │                       provider said how long
        ├── Unreachable         the user cannot be reached (blocked the bot, privacy settings): stop trying
        └── PermanentSendError  the provider refused the request itself (bad token, invalid message,
                                outside the 24 h window): the same request can never succeed

Each adapter maps its vendor's HTTP/API errors onto ``SendError`` in exactly one function (``telegram_error``,
``whatsapp_error``, ``vk_error``). A ``send`` makes one attempt; retry loops live in the worker.
"""

from __future__ import annotations


class ChannelError(Exception):
    """Root of every error raised by :mod:`channels`."""


class BadPayload(ChannelError):
    pass


class BadSignature(ChannelError):
    pass


class SendError(ChannelError):
    pass


class RetryLater(SendError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds the provider asked for; None: the worker's backoff


class Unreachable(SendError):
    pass


class PermanentSendError(SendError):
    pass
