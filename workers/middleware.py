"""Dramatiq middleware: the request's correlation id in every log line, metrics per actor."""

from __future__ import annotations

import time
from typing import Any

import structlog
from dramatiq import Middleware

from feed.observability import ACTOR_MESSAGES, ACTOR_SECONDS


def correlation_id_of(message: Any) -> str | None:
    """The correlation id an actor's message carries (first argument's ``correlation_id``)."""
    args = getattr(message, "args", ())
    if args and isinstance(args[0], dict):
        return args[0].get("correlation_id")
    return None


class CorrelationId(Middleware):
    """Bind the message's correlation id to the log context while it is processed."""

    def before_process_message(self, broker, message):
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            correlation_id=correlation_id_of(message), actor=message.actor_name
        )

    def after_process_message(self, broker, message, *, result=None, exception=None):
        structlog.contextvars.clear_contextvars()

    after_skip_message = after_process_message


class ActorMetrics(Middleware):
    """Count messages processed and failed per actor, and time them."""

    def before_process_message(self, broker, message):
        message.options["_started"] = time.perf_counter()

    def after_process_message(self, broker, message, *, result=None, exception=None):
        outcome = "failed" if exception is not None else "processed"
        ACTOR_MESSAGES.labels(message.actor_name, outcome).inc()
        started = message.options.pop("_started", None)
        if started is not None:
            ACTOR_SECONDS.labels(message.actor_name).observe(time.perf_counter() - started)
