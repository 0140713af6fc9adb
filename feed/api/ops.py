"""Operations endpoints, outside /api/v1: liveness, readiness, metrics.

They are cheap whoever calls them: readiness asks the servers (a broker connection each time)
and metrics count sagas and the outbox in PostgreSQL at most once in a few seconds per process.
"""

from __future__ import annotations

import hmac

import structlog
from flask import Flask, Response, current_app, request
from flask_smorest import Blueprint

from feed.api.problems import problem
from feed.api.schemas import HealthOut, ProblemOut, ReadyOut
from feed.api.web import ASCII_NUMBER, bearer_token, json_response, services
from feed.bootstrap import Services, check_broker, check_database, check_redis
from feed.errors import NotFound, Unauthenticated
from feed.observability import OutboxCollector, at_most_every, metrics_payload
from feed.outbox import backlog

blp = Blueprint("ops", __name__, description="Operations: liveness, readiness, metrics")
log = structlog.get_logger(__name__)
DEPENDENCIES = ("postgres", "redis", "broker")


def install(app: Flask) -> None:
    """The app's readiness check and outbox collector, each asked at most once in a while."""
    svc = app.extensions["feed"]
    app.extensions["readiness"] = at_most_every(
        svc.settings.ready_check_seconds, lambda: unreachable(svc)
    )
    svc.collectors.append(
        OutboxCollector(
            at_most_every(svc.settings.metrics_cache_seconds, lambda: backlog(svc.engine))
        )
    )
    if svc.settings.metrics_port:
        app.before_request(_metrics_on_their_port_only)


def local_port() -> int | None:
    """The port the request came in on: its socket's under gunicorn (SERVER_PORT is what the
    client wrote in Host), else what the server says."""
    sock = request.environ.get("gunicorn.socket")
    if sock is None:
        port = request.environ.get("SERVER_PORT", "")
        return int(port) if ASCII_NUMBER.fullmatch(port) else None
    name = sock.getsockname()
    return name[1] if isinstance(name, tuple) else None


def _metrics_on_their_port_only() -> None:
    """With METRICS_PORT, /metrics is answered there only, and nothing else is."""
    on_metrics_port = local_port() == services().settings.metrics_port
    if (request.endpoint == "ops.metrics") != on_metrics_port:
        raise NotFound("Nothing here.")


def unreachable(svc: Services) -> dict[str, list[str]]:
    """The dependencies that do not answer, each with why in a word."""
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
    return down


@blp.route("/healthz", methods=["GET"])
@blp.response(200, HealthOut, description="Alive")
def healthz() -> Response:
    """The process is alive."""
    return json_response({"status": "ok"}, 200)


@blp.route("/readyz", methods=["GET"])
@blp.response(200, ReadyOut, description="Ready: every dependency answers")
@blp.alt_response(503, schema=ProblemOut, description="A dependency does not answer")
def readyz() -> Response:
    """PostgreSQL, Redis and the broker all answer (asked at most once in
    READY_CHECK_SECONDS); 503 naming those that do not."""
    down = current_app.extensions["readiness"]()
    if down:
        return problem(
            503,
            "Not ready: " + ", ".join(sorted(down)) + " unreachable.",
            errors=down,
            headers={"Retry-After": "5"},
        )
    return json_response({"status": "ready", "checks": dict.fromkeys(DEPENDENCIES, "ok")}, 200)


@blp.route("/metrics", methods=["GET"])
@blp.doc(
    responses={
        "200": {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    }
)
@blp.alt_response(401, schema=ProblemOut, description="METRICS_TOKEN is set: send it as bearer")
@blp.alt_response(404, schema=ProblemOut, description="METRICS_PORT is set: ask on that port")
def metrics() -> Response:
    """Prometheus text format; with METRICS_TOKEN set, for its bearer only; with METRICS_PORT
    set, on that port only."""
    svc = services()
    expected = svc.settings.metrics_token
    sent = bearer_token() or ""
    if expected and not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Unauthenticated("Send the metrics token as 'Authorization: Bearer <token>'.")
    payload, content_type = metrics_payload(*svc.collectors)
    return Response(payload, mimetype=None, content_type=content_type)
