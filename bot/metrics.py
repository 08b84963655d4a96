"""Prometheus metrics of the server and the worker (one process-wide registry, served at ``/metrics``).

Labels stay low-cardinality: channel, outcome, HTTP status - never tenant or user ids.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from bot.exceptions import StorageError

if TYPE_CHECKING:
    from bot.crm.outbox import Outbox

WEBHOOKS = Counter("bookingbot_webhooks_total", "Webhook requests answered", ["channel", "status"])
INGESTED = Counter(
    "bookingbot_inbound_messages_total", "Inbound messages accepted by the fast path", ["channel", "outcome"]
)
ACK_SECONDS = Histogram(
    "bookingbot_webhook_ack_seconds",
    "Time from request to acknowledgement",
    ["channel"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
DRAINED = Counter("bookingbot_drained_messages_total", "Inbound messages processed by drains", ["outcome"])
TURN_SECONDS = Histogram("bookingbot_turn_seconds", "Time to process one inbound message, sends included")
SENDS = Counter("bookingbot_sends_total", "Outbound sends by final outcome", ["channel", "outcome"])
SEND_RETRIES = Counter("bookingbot_send_retries_total", "Send attempts that were retried", ["channel"])
RATE_WAIT_SECONDS = Counter(
    "bookingbot_send_rate_wait_seconds_total", "Time sends waited for a rate limit", ["channel"]
)
WORKER_POLL_ERRORS = Counter("bookingbot_worker_poll_errors_total", "Worker queue polls that failed (Redis down)")
LOG_BACKLOG = Gauge("bookingbot_message_log_backlog", "Message log rows waiting in memory to be written")
LOG_WRITE_ERRORS = Counter("bookingbot_message_log_write_errors_total", "Message log writes that failed (retried)")
LOG_DROPPED = Counter(
    "bookingbot_message_log_dropped_total", "Message log rows given up on (each one logged)", ["reason"]
)

OUTBOX_ROWS = Gauge("bookingbot_crm_outbox_rows", "CRM outbox rows not yet delivered", ["status"])
OUTBOX_AGE = Gauge(
    "bookingbot_crm_outbox_oldest_age_seconds", "Age of the oldest undelivered CRM outbox row", ["status"]
)

OUTBOX_PARKED = Counter(
    "bookingbot_crm_outbox_parked_total",
    "CRM outbox rows given up on until `bookingbot outbox retry`, by reason (auth, permission, rejected, attempts)",
    ["reason"],
)


async def observe_outbox(outbox: Outbox) -> None:
    """Read the CRM outbox's depth and age (SQL, shared by every process) just before a scrape."""
    try:
        stats = await outbox.stats(datetime.now(UTC))
    except StorageError as exc:
        logging.getLogger(__name__).warning("metrics: %s", exc)
        return
    for status, (rows, age) in stats.items():
        OUTBOX_ROWS.labels(status).set(rows)
        OUTBOX_AGE.labels(status).set(age)

VOICE_NOTES = Counter("bookingbot_voice_notes_total", "Voice notes by outcome", ["channel", "outcome"])
VOICE_SECONDS = Histogram(
    "bookingbot_voice_seconds",
    "Time to fetch, decode and transcribe one voice note",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST

LLM_CALLS = Counter(
    "bookingbot_llm_calls_total", "LLM calls by purpose and outcome (over_budget: not made)", ["purpose", "outcome"]
)
LLM_TOKENS = Counter("bookingbot_llm_tokens_total", "Tokens the LLM provider reported", ["purpose", "kind"])
LLM_BUDGET_ALERTS = Counter(
    "bookingbot_llm_budget_alerts_total", "Token budgets crossing 80% / 100% (once per period)", ["budget", "threshold"]
)
LLM_PARAPHRASES = Counter(
    "bookingbot_llm_paraphrases_total",
    "Replies to paraphrase by source: cache (no call), llm (fresh paraphrase), template (refused/failed/over budget)",
    ["source"],
)
