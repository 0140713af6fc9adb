"""Structured JSON logs (structlog) and Prometheus metrics shared by every process."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

T = TypeVar("T")

HTTP_REQUESTS = Counter(
    "feed_http_requests_total", "HTTP requests answered", ["method", "endpoint", "status"]
)
HTTP_LATENCY = Histogram(
    "feed_http_request_seconds",
    "Time to answer an HTTP request",
    ["method", "endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
ADMISSION_REFUSALS = Counter(
    "feed_admission_refusals_total",
    "Requests refused before the app saw them (503): at the queue deadline, or a login while "
    "every hashing slot was taken",
    ["reason"],
)
ADMISSION_REFUSAL_SECONDS = Histogram(
    "feed_admission_refusal_seconds",
    "From a refused request's arrival (its wait on the event loop included) to its 503",
    buckets=FAST_BUCKETS,
)
ADMISSION_LIMIT = Gauge(
    "feed_admission_limit",
    "Requests a worker runs at once (adaptive)",
    multiprocess_mode="livesum",
)
EVENT_LOOP_LAG = Histogram(
    "feed_event_loop_lag_seconds",
    "How late a gevent worker's event loop runs a timer",
    buckets=FAST_BUCKETS,
)

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.35, 0.5, 0.75, 1, 2, 5, 10, 30, 60, 300)
PROJECTION_LAG = Histogram(
    "feed_projection_lag_seconds",
    "From an event's time to its projection into Redis (stage: event, or a fan-out page)",
    ["stage"],
    buckets=LAG_BUCKETS,
)
FANOUT_PAGE_SIZE = Histogram(
    "feed_fanout_page_followers",
    "Followers in one fan-out page",
    buckets=(1, 10, 100, 250, 500, 1000, 2000, 5000),
)
FANOUT_SECONDS = Histogram(
    "feed_fanout_page_seconds",
    "Time to apply one fan-out page to Redis (pages applied on their own)",
    ["op"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
ACTOR_MESSAGES = Counter(
    "feed_actor_messages_total", "Messages handled per actor and outcome", ["actor", "outcome"]
)
ACTOR_SECONDS = Histogram(
    "feed_actor_seconds",
    "Time an actor spent on one message",
    ["actor"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
POISON_MESSAGES = Counter(
    "feed_poison_messages_total",
    "Messages no handler can read, sent to the dead-letter queue without retries",
    ["actor"],
)
RELAY_PUBLISHED = Counter("feed_relay_published_total", "Outbox events published by the relay")
RELAY_ERRORS = Counter("feed_relay_errors_total", "Relay batches that failed (broker down...)")


def at_most_every(seconds: float, read: Callable[[], T]) -> Callable[[], T]:
    """``read``, asked at most once in ``seconds``; its last answer in between. For what a scrape
    or a probe reads from a server: anyone may call them as often as they like. A failure is
    not kept: the next call asks again."""
    lock = threading.Lock()
    last: list[tuple[float, T]] = []

    def cached() -> T:
        with lock:  # callers at once wait for one answer rather than each asking
            if not last or time.monotonic() - last[0][0] >= seconds:
                value = read()
                last[:] = [(time.monotonic(), value)]
            return last[0][1]

    return cached


class OutboxCollector:
    """Outbox backlog and relay lag, read from PostgreSQL when /metrics is scraped."""

    def __init__(self, backlog: Callable[[], tuple[int, float]]) -> None:
        self._backlog = backlog

    def collect(self):
        try:
            count, oldest = self._backlog()
        except Exception:  # the database is down: say so instead of failing the scrape
            count, oldest = -1, -1.0
        yield GaugeMetricFamily(
            "feed_outbox_backlog", "Events in the outbox not yet published", value=count
        )
        yield GaugeMetricFamily(
            "feed_relay_lag_seconds",
            "Age of the oldest unpublished outbox event (0 when none)",
            value=oldest,
        )


def configure_logging(*, json_output: bool = True, level: int = logging.INFO) -> None:
    """Render structlog's and the stdlib's records alike, as JSON lines (or for a console) on
    stderr. structlog's own records are rendered and written by structlog directly: going
    through a stdlib ``LogRecord`` and handler cost three times as much per line, and the
    workers write a line per event."""
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def metrics_payload(*extra_collectors: object) -> tuple[bytes, str]:
    """Prometheus text: every process of the service in multiprocess mode (API workers, relay
    and actors sharing PROMETHEUS_MULTIPROC_DIR), else this process; plus ``extra_collectors``."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_ThisProcess())
    for collector in extra_collectors:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _ThisProcess:
    def collect(self):
        yield from REGISTRY.collect()
