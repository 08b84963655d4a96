"""Every Redis key bookingbot uses, built here and nowhere else.

All keys start with ``bb:{tenant}:`` so tenants never share a key, and a whole tenant can be inspected with one
``SCAN MATCH bb:{tenant}:*``. Conversation ids (``channel:user``) are used verbatim: they never contain ``{``.
"""

from __future__ import annotations

from arq.constants import default_queue_name, health_check_key_suffix, job_key_prefix

PREFIX = "bb"
TURN_TTL_S = 7 * 86400
"""How long a turn's replies, its sent marks and its failure record live: as long as a provider may redeliver."""


def tenant_pattern(tenant: str) -> str:
    """A SCAN pattern matching every key of one tenant (``*`` and ``?`` in a tenant id are not allowed)."""
    return f"{PREFIX}:{tenant}:*"


def session(tenant: str, conversation: str) -> str:
    """The conversation's dialog session (a JSON string)."""
    return f"{PREFIX}:{tenant}:session:{conversation}"


def inbox(tenant: str, conversation: str) -> str:
    """The conversation's FIFO of inbound messages waiting to be processed (a list, RPUSH / LPOP)."""
    return f"{PREFIX}:{tenant}:inbox:{conversation}"


def lease(tenant: str, conversation: str) -> str:
    """Who is draining the conversation's inbox right now (a string with an expiry)."""
    return f"{PREFIX}:{tenant}:lease:{conversation}"


def dedupe(tenant: str, channel: str, event_id: str) -> str:
    """Marks a provider event as seen (SET NX with an expiry) so a redelivery is a no-op."""
    return f"{PREFIX}:{tenant}:seen:{channel}:{event_id}"


def ready(tenant: str) -> str:
    """Conversations of a tenant that have messages waiting and no drainer (a set) - used in embedded mode."""
    return f"{PREFIX}:{tenant}:ready"


def sent(tenant: str, conversation: str, event_id: str) -> str:
    """Replies already delivered for one inbound event (a set of reply indexes), so a retried job never resends."""
    return f"{PREFIX}:{tenant}:sent:{conversation}:{event_id}"


def rate(tenant: str, channel: str, scope: str) -> str:
    """A send-rate window for a channel scope (per chat, per bot, per number)."""
    return f"{PREFIX}:{tenant}:rate:{channel}:{scope}"


def scheduled(tenant: str, conversation: str) -> str:
    """Set while a drain job for the conversation exists (its value: the job id); see :mod:`bot.ingest`."""
    return f"{PREFIX}:{tenant}:scheduled:{conversation}"


def replies(tenant: str, conversation: str, event_id: str) -> str:
    """The replies computed for one inbound event (JSON), kept so a redriven message can finish sending."""
    return f"{PREFIX}:{tenant}:replies:{conversation}:{event_id}"


def failures(tenant: str, conversation: str, event_id: str) -> str:
    """How many times handling one inbound message failed (a counter); it is dead-lettered at the limit."""
    return f"{PREFIX}:{tenant}:failures:{conversation}:{event_id}"


def unreachable(tenant: str, conversation: str) -> str:
    """Marks a user who blocked the bot: nothing is sent to them until they write again."""
    return f"{PREFIX}:{tenant}:unreachable:{conversation}"


def deadletter(tenant: str) -> str:
    """Inbound messages given up on after every retry (a list of JSON items), for an operator to inspect."""
    return f"{PREFIX}:{tenant}:deadletter"


def webchat_outbox(tenant: str, user_id: str) -> str:
    """Replies to a web chat user (a list of JSON messages; position + 1 is the index a poll asks after)."""
    return f"{PREFIX}:{tenant}:webchat:{user_id}"


def webchat_voice(tenant: str, media_id: str) -> str:
    """A voice note uploaded from the web chat page, until a drain transcribes it (bytes, with a TTL)."""
    return f"{PREFIX}:{tenant}:webchat-voice:{media_id}"


def webchat_secret(tenant: str) -> str:
    """The key that signs a tenant's web chat identities (created once, shared by every server process)."""
    return f"{PREFIX}:{tenant}:webchat-secret"


def webchat_events(tenant: str) -> str:
    """Pub/sub channel announcing a web chat user id whose outbox grew (wakes long polls in every server)."""
    return f"{PREFIX}:{tenant}:webchat-events"


WEBCHAT_EVENTS_PATTERN = f"{PREFIX}:*:webchat-events"
"""Pattern matching :func:`webchat_events` of every tenant (one subscription per server process)."""


def job(job_id: str) -> str:
    """arq's key for a queued job (arq's own layout, written by the ingest script exactly as arq does)."""
    return job_key_prefix + job_id


JOB_QUEUE: str = default_queue_name
"""arq's default queue (a sorted set of job ids scored by run time in ms)."""


def reminders(tenant: str) -> str:
    """A tenant's scheduled reminders (a sorted set: ``<booking id>|<start>|<offset>`` scored by when it is due)."""
    return f"{PREFIX}:{tenant}:reminders"


def worker_heartbeat(queue: str) -> str:
    """A running worker's heartbeat (arq's health-check key: refreshed by its poll loop with an expiry, deleted
    when it stops); ``bookingbot worker --check`` reads it. Per queue, not per tenant: a worker serves all."""
    return queue + health_check_key_suffix


def scratch(tenant: str, name: str) -> str:
    """A free-form key for tests and tools (order checks, benchmarks); never used by the running bot."""
    return f"{PREFIX}:{tenant}:scratch:{name}"


def handoffs(tenant: str) -> str:
    """Hash: conversation -> JSON of its open handoff to a person (``bookingbot handoff list|resume``)."""
    return f"{PREFIX}:{tenant}:handoffs"


def llm_budget(tenant: str, scope: str, period: str) -> str:
    """A token budget's ledger for one period (a hash, see :mod:`llm.quota`): ``scope`` is ``day``, ``month``
    or ``conv:<conversation>`` (a conversation's day); ``period`` is ``YYYY-MM-DD`` or ``YYYY-MM``."""
    return f"{PREFIX}:{tenant}:llm-budget:{scope}:{period}"


def paraphrase(tenant: str, digest: str) -> str:
    """A cached paraphrase (or the verdict to keep the template text) of one rendered reply."""
    return f"{PREFIX}:{tenant}:paraphrase:{digest}"
