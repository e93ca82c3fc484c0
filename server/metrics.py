"""The server's Prometheus metrics, in a registry of their own (one per app, so tests and
several apps in one process never share counters). Served at GET /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Acks are expected in milliseconds (a durable insert), processing in milliseconds to
# seconds (a profile fetch on first contact), so the buckets start small.
_ACK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_PROCESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every metric the server exports (names start with `flow_`)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.webhook_requests = Counter(
            "flow_webhook_requests",
            "POST /webhook requests by outcome "
            "(accepted, bad_signature, malformed, too_large, unavailable).",
            ["outcome"],
            registry=registry,
        )
        self.events_received = Counter(
            "flow_events_received",
            "Webhook events stored in the inbox, by kind (redeliveries not counted).",
            ["kind"],
            registry=registry,
        )
        self.events_duplicate = Counter(
            "flow_events_duplicate",
            "Webhook events received again and skipped (Meta redelivers at least once).",
            registry=registry,
        )
        self.events_processed = Counter(
            "flow_events_processed",
            "Webhook events processed, by kind and final status (done, ignored, unknown_page).",
            ["kind", "status"],
            registry=registry,
        )
        self.events_failed = Counter(
            "flow_events_failed",
            "Webhook events given up after repeated processing errors, by kind.",
            ["kind"],
            registry=registry,
        )
        self.ack_seconds = Histogram(
            "flow_webhook_ack_seconds",
            "Time from reading a POST /webhook to answering it (events stored durably).",
            buckets=_ACK_BUCKETS,
            registry=registry,
        )
        self.processing_seconds = Histogram(
            "flow_event_processing_seconds",
            "Time to process one event (profile fetch, flow step, database transaction).",
            buckets=_PROCESS_BUCKETS,
            registry=registry,
        )
        self.event_lag_seconds = Histogram(
            "flow_event_lag_seconds",
            "Time from storing an event to finishing its processing (queueing included).",
            buckets=_PROCESS_BUCKETS,
            registry=registry,
        )
        self.runtime_faults = Counter(
            "flow_runtime_faults",
            "Faults while running flows (the user got the error message).",
            registry=registry,
        )
        self.sends = Counter(
            "flow_sends",
            "Send API calls by outcome (sent, retried, failed, …) and Meta error code.",
            ["outcome", "code"],
            registry=registry,
        )
        self._sends: dict[tuple[str, str], Any] = {}
        self.queue_depth = Gauge(
            "flow_queue_depth",
            "Work waiting: inbox = events queued or being processed, outbox = messages to send.",
            ["queue"],
            registry=registry,
        )
        self.flows_loaded = Gauge(
            "flow_flows_loaded",
            "Flows in the running program (0 before they are loaded).",
            registry=registry,
        )
        self.reloads = Counter(
            "flow_reloads",
            "Flow reloads (POST /admin/reload or --reload) by outcome (deployed, refused).",
            ["outcome"],
            registry=registry,
        )

    def track_queue(self, queue: str, depth: Callable[[], float]) -> None:
        """Report `depth()` as the size of `queue` at every scrape."""
        self.queue_depth.labels(queue).set_function(depth)

    def send_outcome(self, outcome: str, code: int | str | None = None) -> None:
        """Count one Send API call's outcome (for the sender)."""
        key = (outcome, "-" if code is None else str(code))
        child = self._sends.get(key)
        if child is None:  # `labels()` validates and locks on every call: look it up once
            child = self._sends[key] = self.sends.labels(*key)
        child.inc()

    def render(self) -> bytes:
        """The exposition text for GET /metrics."""
        return generate_latest(self.registry)
