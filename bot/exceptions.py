"""The one exception tree of :mod:`bot`.

BotError
├── ConfigError              config.yaml is invalid (``problems``: ``file:line: message`` items)
├── StorageError             Redis or SQL failed in a way the caller cannot fix
│   └── ConcurrentUpdate     a session was saved by someone else since it was loaded
├── BookingError             the booking backend refused or failed
│   ├── SlotTaken            the slot is no longer free (someone else booked it first)
│   ├── BookingNotFound      no such booking (or it belongs to another tenant)
│   └── BackendUnavailable   the backend could not be reached after retries
│       └── RateLimited      the backend said 429 (``retry_after``: seconds until its window resets)
├── DeliveryFailed           a reply could not be sent after every attempt (the drain job retries)
├── CrmError                 the CRM (erxes) refused or failed; bot.crm.erxes.map_error is the one mapper
│   ├── CrmUnavailable       network error, timeout, 5xx: try again later
│   ├── CrmAuthFailed        bad, revoked or expired token (HTTP 401, "Login required"): the row is parked at
│   │                        once (failed) until an operator fixes the token and runs `bookingbot outbox retry`
│   ├── CrmPermissionDenied  the token's user lacks a permission ("Permission required"): parked likewise
│   ├── CrmDuplicate         a uniqueness error ("Duplicated phone/code"): the record exists, find it
│   └── CrmRejected          the request itself is wrong (HTTP 400, other business errors): retrying cannot help
└── ChannelNotConfigured     a tenant has no account on that channel (a webhook's 404)
"""

from __future__ import annotations

from dialogs.exceptions import Problem


class BotError(Exception):
    """Root of every error raised by :mod:`bot`."""


class ConfigError(BotError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StorageError(BotError):
    pass


class ConcurrentUpdate(StorageError):
    pass


class BookingError(BotError):
    pass


class SlotTaken(BookingError):
    pass


class BookingNotFound(BookingError):
    pass


class BackendUnavailable(BookingError):
    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient  # False: retrying cannot help (e.g. the API key is refused)


class RateLimited(BackendUnavailable):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, transient=False)
        self.retry_after = retry_after


class DeliveryFailed(BotError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # the provider's last word on when to try again, if it said


class ChannelNotConfigured(BotError):
    pass


class CrmError(BotError):
    pass


class CrmUnavailable(CrmError):
    pass


class CrmAuthFailed(CrmError):
    pass


class CrmPermissionDenied(CrmError):
    pass


class CrmDuplicate(CrmError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field  # "phone", "code", "email"


class CrmRejected(CrmError):
    pass
