"""Prometheus metrics of the server and the worker (one process-wide registry, served at ``/metrics``).

Labels stay low-cardinality: channel, outcome, HTTP status - never tenant or user ids.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

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


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
