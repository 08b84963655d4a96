"""Dialog sessions in Redis: one JSON string per conversation, with a TTL and optimistic concurrency.

``load`` is one GET. ``save`` is one EVALSHA: the script compares the stored document's ``version`` with the
version the caller loaded and writes only when they match, so two workers that loaded the same session cannot
both save it (the loser gets :class:`~bot.exceptions.ConcurrentUpdate` and must reload and redo its turn).
Every save refreshes the TTL, so a session expires ``ttl_seconds`` after the conversation's last turn.

A turn's outcome is stored by the same script: the session (whose ``last_event`` names the message it answered)
and that turn's replies (``keys.replies``) are written together or not at all. A worker that dies before the
script redoes the whole turn (its effects are idempotent); one that dies after it finds the turn done and the
replies to send (see :mod:`bot.worker`).
"""

from __future__ import annotations

from redis.asyncio import Redis

from bot import keys
from bot.exceptions import ConcurrentUpdate
from bot.keys import TURN_TTL_S
from dialogs.exceptions import SessionError
from dialogs.session import Session

# KEYS[1] session, KEYS[2] the turn's replies; ARGV[1] expected stored version (0: key must be absent), ARGV[2]
# new JSON, ARGV[3] TTL ms, ARGV[4] the replies (JSON; '' stores none), ARGV[5] their TTL s.
# Returns 1 written, 0 version mismatch, -1 stored value unreadable. cjson only reads the stored document's
# version: matching it as text could hit a slot or attempt named "version".
_SAVE = """
local stored = redis.call('GET', KEYS[1])
local expected = tonumber(ARGV[1])
if stored then
  local ok, doc = pcall(cjson.decode, stored)
  if not ok or type(doc) ~= 'table' or type(doc.version) ~= 'number' then return -1 end
  if doc.version ~= expected then return 0 end
elseif expected ~= 0 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5]) end
return 1
"""


class SessionStore:
    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        if ttl_seconds <= 0:
            raise ValueError(f"session TTL must be positive, got {ttl_seconds}")
        self._redis = redis
        self._ttl_ms = ttl_seconds * 1000
        self._save = redis.register_script(_SAVE)

    async def load(self, tenant: str, conversation: str) -> Session | None:
        """The stored session, or None if there is none (new or expired). SessionError if unreadable."""
        key = keys.session(tenant, conversation)
        raw = await self._redis.get(key)
        if raw is None:
            return None
        try:
            session = Session.from_json(raw)
        except SessionError as exc:
            raise SessionError(f"{key}: {exc}") from exc
        if (session.tenant, session.conversation) != (tenant, conversation):
            raise SessionError(f"{key}: holds the session of {session.tenant}/{session.conversation}")
        return session

    async def save(self, session: Session, replies: str = "") -> None:
        """Write the session if nobody saved it since it was loaded; bumps ``session.version`` on success.

        ``replies`` (JSON) are stored in the same step as the replies to ``session.last_event``."""
        key = keys.session(session.tenant, session.conversation)
        turn = keys.replies(session.tenant, session.conversation, session.last_event or "")
        payload = session.model_copy(update={"version": session.version + 1}).to_json()
        args: list[str | int] = [session.version, payload, self._ttl_ms, replies, TURN_TTL_S]
        status = await self._save(keys=[key, turn], args=args)
        if status == 0:
            raise ConcurrentUpdate(f"{key}: saved by someone else since version {session.version} was loaded")
        if status != 1:
            raise SessionError(f"{key}: the stored session is not valid JSON with a version")
        session.version += 1

    async def delete(self, tenant: str, conversation: str) -> None:
        await self._redis.delete(keys.session(tenant, conversation))
