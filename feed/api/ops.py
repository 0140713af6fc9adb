"""Operations endpoints, outside /api/v1: liveness, readiness, metrics."""

from __future__ import annotations

import structlog
from flask import Response
from flask_smorest import Blueprint

from feed.api.problems import problem
from feed.api.schemas import HealthOut, ProblemOut, ReadyOut
from feed.api.web import json_response, services
from feed.bootstrap import check_broker, check_database, check_redis
from feed.observability import OutboxCollector, metrics_payload
from feed.outbox import backlog

blp = Blueprint("ops", __name__, description="Operations: liveness, readiness, metrics")
log = structlog.get_logger(__name__)


@blp.route("/healthz", methods=["GET"])
@blp.response(200, HealthOut, description="Alive")
def healthz() -> Response:
    """The process is alive."""
    return json_response({"status": "ok"}, 200)


@blp.route("/readyz", methods=["GET"])
@blp.response(200, ReadyOut, description="Ready: every dependency answers")
@blp.alt_response(503, schema=ProblemOut, description="A dependency does not answer")
def readyz() -> Response:
    """PostgreSQL, Redis and the broker all answer; 503 naming those that do not."""
    svc = services()
    checks = {
        "postgres": lambda: check_database(svc.engine),
        "redis": lambda: check_redis(svc.redis),
        "broker": lambda: check_broker(svc.settings.broker_url),
    }
    down = {}
    for name, check in checks.items():
        try:
            check()
        except Exception as error:  # any failure means "not ready"; say which, not why
            log.warning("dependency_unreachable", dependency=name, error=type(error).__name__)
            down[name] = ["unreachable"]
    if down:
        return problem(
            503,
            "Not ready: " + ", ".join(sorted(down)) + " unreachable.",
            errors=down,
            headers={"Retry-After": "5"},
        )
    return json_response({"status": "ready", "checks": dict.fromkeys(checks, "ok")}, 200)


@blp.route("/metrics", methods=["GET"])
@blp.doc(
    responses={
        "200": {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    }
)
def metrics() -> Response:
    """Prometheus text format."""
    svc = services()
    payload, content_type = metrics_payload(
        OutboxCollector(lambda: backlog(svc.engine)), *svc.collectors
    )
    return Response(payload, mimetype=None, content_type=content_type)
