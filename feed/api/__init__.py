"""The HTTP layer: thin blueprints over the command handlers and queries."""

from __future__ import annotations

import json
import time
import uuid

import structlog
import swagger_ui_bundle
from flask import Blueprint, Flask, Response, g, request
from flask.sessions import SecureCookieSessionInterface, SessionMixin
from flask_smorest import Api
from werkzeug.exceptions import BadRequest, HTTPException

from feed.api import accounts, baseline, ops, posts, timelines
from feed.api.converters import IdConverter
from feed.api.limits import limiter
from feed.api.openapi import ApiConventions
from feed.api.problems import problem, register_problem_handlers
from feed.api.schemas import ProblemOut
from feed.api.web import optional_principal, require_admin, services, touch_activity
from feed.observability import HTTP_LATENCY, HTTP_REQUESTS

API_PREFIX = "/api/v1"
ADMIN_PREFIX = API_PREFIX + "/admin/"
SWAGGER_ASSETS = "/docs/assets"
REQUEST_ID_HEADER = "X-Request-ID"
# Endpoints whose body is not JSON (multipart uploads): added by the blueprints' owners.
NON_JSON_ENDPOINTS: set[str] = set()
# Metric label values: any other method is "other", so a client cannot add series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})


class FeedApi(Api):
    """flask-smorest's Api, with errors left to the app's problem+json handlers (and
    documented by ``feed.api.openapi``)."""

    DEFAULT_ERROR_RESPONSE_NAME = None
    ERROR_SCHEMA = ProblemOut

    def _register_error_handlers(self) -> None:
        pass


class CookieSessionsOutsideTheApi(SecureCookieSessionInterface):
    """The JSON API authenticates by bearer token and never uses a cookie session, so its
    requests get none (Flask would otherwise build a signing serializer and check the session
    cookie on every request); the operators' page keeps Flask's signed-cookie session."""

    def open_session(self, app: Flask, request) -> SessionMixin | None:
        if request.path.startswith(API_PREFIX + "/"):
            return self.make_null_session(app)
        return super().open_session(app, request)


def init_api(app: Flask) -> Api:
    """Register converters, hooks, error handlers and the feed's blueprints on ``app``; the
    flask-smorest ``Api``, for other packages' blueprints."""
    app.session_interface = CookieSessionsOutsideTheApi()
    app.url_map.converters["id"] = IdConverter
    app.url_map.strict_slashes = False
    app.config.update(
        API_TITLE="feed",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        # Swagger UI's files from a pinned package, served here: /docs works offline, and
        # what it runs is what pyproject.toml pins, not whatever a CDN serves today.
        OPENAPI_SWAGGER_UI_URL=SWAGGER_ASSETS + "/",
    )
    app.register_blueprint(
        Blueprint(
            "swagger_ui_assets",
            __name__,
            static_folder=swagger_ui_bundle.swagger_ui_path,
            static_url_path=SWAGGER_ASSETS,
        )
    )
    api = FeedApi(
        app,
        spec_kwargs={
            "components": {
                "securitySchemes": {
                    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
                }
            },
            "extra_plugins": [ApiConventions(app)],
        },
    )
    api.register_converter(IdConverter, lambda converter: {"type": "string", "pattern": "^[0-9]+$"})
    register_problem_handlers(app)
    app.after_request(_safe_headers)  # registered first, so it runs after the limiter's
    limiter.init_app(app)
    app.before_request(_start_request)
    app.before_request(_verify_token)
    app.before_request(_admins_only)
    app.before_request(_require_json_body)
    app.after_request(_finish_request)
    api.register_blueprint(accounts.blp, url_prefix=API_PREFIX)
    api.register_blueprint(posts.blp, url_prefix=API_PREFIX)
    api.register_blueprint(timelines.blp, url_prefix=API_PREFIX)
    api.register_blueprint(ops.blp)  # in the OpenAPI document too
    ops.install(app)
    if app.extensions["feed"].settings.bench_baseline:
        app.register_blueprint(baseline.blp)
    return api


def too_long(environ: dict) -> Response:
    """The answer to a request interrupted at its deadline (feed.deadline): a dependency it
    waited on does not answer."""
    method = method_label(environ.get("REQUEST_METHOD", ""))
    HTTP_REQUESTS.labels(method, "deadline exceeded", "503").inc()
    return problem(
        503,
        "A dependency did not answer in time; try again later.",
        headers={"Retry-After": "5", "X-Content-Type-Options": "nosniff"},
    )


def _start_request() -> None:
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = (
        incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
    )
    g.started = time.perf_counter()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=g.request_id)


def method_label(method: str) -> str:
    """The method as a metric label: one of the known ones, or ``other``."""
    return method if method in KNOWN_METHODS else "other"


def _verify_token() -> None:
    """A token sent to the API is checked before any view runs: a bad one is a 401 whatever
    the route, before the view asks PostgreSQL or Redis anything."""
    if request.path.startswith(API_PREFIX + "/"):
        optional_principal()


def _admins_only() -> None:
    """Every admin route answers 401 or 403 before it looks at the request: a non-admin learns
    nothing from validation errors."""
    if request.path.startswith(ADMIN_PREFIX):
        require_admin()


def _require_json_body() -> None:
    """A command with a body must send JSON: anything else is a 400, before validation."""
    if request.method not in {"POST", "PUT", "PATCH"} or request.endpoint in NON_JSON_ENDPOINTS:
        return
    if request.blueprint == "admin_page":  # the operators' page posts HTML forms
        return
    data = request.get_data(cache=True)  # 413 past MAX_CONTENT_LENGTH
    if not data:
        return
    if not request.is_json:
        raise BadRequest("The request body must be JSON (Content-Type: application/json).")
    try:
        json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python parses
        raise BadRequest("The request body is not valid JSON.") from None


def _safe_headers(response: Response) -> Response:
    """On every answer. Flask-Limiter adds Retry-After (its window's reset) to every answer
    of a limited route; it belongs to "try again later" only (API.md)."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    if services().settings.behind_tls:
        response.headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    if response.status_code not in (429, 503):
        response.headers.pop("Retry-After", None)
    return response


def _finish_request(response: Response) -> Response:
    response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
    principal = g.get("principal")
    if principal is not None and not g.get("activity_touched") and response.status_code < 400:
        touch_activity(services(), principal.account_id)
    endpoint = request.url_rule.rule if request.url_rule else "unmatched"
    method = method_label(request.method)
    HTTP_REQUESTS.labels(method, endpoint, str(response.status_code)).inc()
    if "started" in g:
        HTTP_LATENCY.labels(method, endpoint).observe(time.perf_counter() - g.started)
    return response


__all__ = ["API_PREFIX", "init_api", "HTTPException"]
