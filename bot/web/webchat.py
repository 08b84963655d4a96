"""The web chat's delivery side: a per-user outbox in Redis, long-polled by the chat page.

The worker "sends" a web reply by appending it to the user's outbox (a list) and publishing the user on the
tenant's pub/sub channel; every server process keeps one pattern subscription (:meth:`WebChat.listen`) that
wakes the long polls waiting for that user. A reply's ``index`` is its position in the outbox, from 1, so the
page asks for ``after=<last index seen>`` and never misses or repeats a reply.

Who may read an outbox: the page is served with a fresh ``user_id`` and a token, the HMAC of that id under the
tenant's web chat secret (created once in Redis, so every server process signs alike). Every post and poll
must carry the token, so knowing someone's ``user_id`` is not enough to read their replies or speak for them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot import keys
from channels.base import InboundMessage, OutboundMessage
from channels.exceptions import PermanentSendError
from channels.web import WebButton, WebReply, render

log = logging.getLogger(__name__)

MAX_WAIT_S = 25.0  # below the usual 30 s proxy timeouts
MEDIA_TTL_S = 86_400  # an uploaded voice note waits this long for its drain
_RECONNECT_S = 1.0


class ChatReply(BaseModel):
    index: int  # position in the user's outbox, from 1
    text: str
    buttons: list[WebButton] = Field(default_factory=list)


class WebChat:
    """The ``web`` channel's outlet (``send``), and the page's reads (``replies``, ``wait``)."""

    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._waiters: dict[tuple[str, str], set[asyncio.Event]] = {}
        self._secrets: dict[str, bytes] = {}

    async def identity(self, tenant: str) -> tuple[str, str]:
        """A new web chat user of ``tenant``: (user id, its token)."""
        user_id = f"web-{secrets.token_hex(12)}"
        return user_id, await self.token(tenant, user_id)

    async def token(self, tenant: str, user_id: str) -> str:
        return hmac.new(await self._secret(tenant), user_id.encode(), hashlib.sha256).hexdigest()

    async def authorized(self, tenant: str, user_id: str, token: str | None) -> bool:
        """Whether ``token`` was issued for ``user_id`` by this tenant (constant-time comparison)."""
        # As bytes: compare_digest refuses str with non-ASCII characters, and a header may carry any
        return token is not None and hmac.compare_digest(token.encode(), (await self.token(tenant, user_id)).encode())

    async def _secret(self, tenant: str) -> bytes:
        if tenant not in self._secrets:
            key = keys.webchat_secret(tenant)
            value = await self._redis.get(key)
            if value is None:  # the first process to ask creates it; a racing one reads the winner's
                await self._redis.set(key, secrets.token_hex(32), nx=True)
                value = await self._redis.get(key)
            if value is None:
                raise RedisError(f"{key} vanished while it was being created")  # the routes answer 503
            self._secrets[tenant] = str(value).encode()
        return self._secrets[tenant]

    async def send(self, msg: OutboundMessage) -> None:
        outbox = keys.webchat_outbox(msg.tenant, msg.user_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(outbox, render(msg).model_dump_json())
            pipe.expire(outbox, self._ttl_s)
            pipe.publish(keys.webchat_events(msg.tenant), json.dumps([msg.tenant, msg.user_id]))
            await pipe.execute()

    async def keep_media(self, tenant: str, audio: bytes) -> str:
        """Keep an uploaded voice note until a drain fetches it (:meth:`media`); its media id."""
        media_id = secrets.token_hex(16)
        await self._redis.set(keys.webchat_voice(tenant, media_id), base64.b64encode(audio), ex=MEDIA_TTL_S)
        return media_id

    async def media(self, tenant: str, media_id: str) -> bytes:
        """The web chat's ``fetch_media``: an uploaded voice note (PermanentSendError once it expired)."""
        stored = await self._redis.get(keys.webchat_voice(tenant, media_id))
        if stored is None:
            raise PermanentSendError(f"web chat voice note {media_id} is gone (kept {MEDIA_TTL_S} s)")
        return base64.b64decode(stored)

    async def ack_button(self, msg: InboundMessage) -> None:
        """Nothing to acknowledge: the page disables a keyboard itself once a button is pressed."""

    async def replies(self, tenant: str, user_id: str, after: int) -> list[ChatReply]:
        """The user's replies with an index above ``after``."""
        start = max(after, 0)
        raw: list[str] = await self._redis.lrange(keys.webchat_outbox(tenant, user_id), start, -1)  # type: ignore[misc]
        replies = (WebReply.model_validate_json(item) for item in raw)
        return [ChatReply(index=n, text=r.text, buttons=r.buttons) for n, r in enumerate(replies, start + 1)]

    async def wait(self, tenant: str, user_id: str, after: int, wait_s: float) -> list[ChatReply]:
        """Like :meth:`replies`, but waits up to ``wait_s`` seconds for a first new reply."""
        found = await self.replies(tenant, user_id, after)
        if found or wait_s <= 0:
            return found
        event = asyncio.Event()
        waiters = self._waiters.setdefault((tenant, user_id), set())
        waiters.add(event)
        try:
            # Looked again once registered: a reply published between the first read and now is not missed.
            found = await self.replies(tenant, user_id, after)
            if found:
                return found
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(wait_s, MAX_WAIT_S))
            return await self.replies(tenant, user_id, after)
        finally:
            waiters.discard(event)
            if not waiters:
                self._waiters.pop((tenant, user_id), None)

    async def listen(self) -> None:
        """Wake long polls on every tenant's outbox events; runs until cancelled, reconnects after errors."""
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.psubscribe(keys.WEBCHAT_EVENTS_PATTERN)
                    self._wake_all()  # anything published while (re)connecting is read by the woken polls
                    async for message in pubsub.listen():
                        self._wake(message.get("data"))
            except RedisError as exc:
                log.warning("web chat event subscription lost (%s); reconnecting", exc)
                await asyncio.sleep(_RECONNECT_S)

    def _wake(self, data: object) -> None:
        try:
            tenant, user_id = json.loads(str(data))
        except (ValueError, TypeError):
            return
        for event in self._waiters.get((str(tenant), str(user_id)), ()):
            event.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()
