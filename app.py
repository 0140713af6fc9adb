"""The Flask app factory: config, extensions, blueprints, CLI. No business logic here."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from flask import Flask
from flask_migrate import Migrate
from flask_smorest import Api
from werkzeug.middleware.proxy_fix import ProxyFix

from feed.admission import Admission
from feed.api import API_PREFIX, NON_JSON_ENDPOINTS, init_api, too_long
from feed.bootstrap import Services
from feed.cli import register_cli
from feed.config import Settings
from feed.deadline import RequestDeadline
from feed.observability import at_most_every, configure_logging
from sagas import api as saga_api
from sagas import media_api, queues_api
from sagas.admin import bp as admin_page
from sagas.bootstrap import build_services
from sagas.cli import register_saga_cli
from sagas.engine import counts_by_type_and_status
from sagas.metrics import SagaCollector
from workers.cli import dead_letters_cli

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    """Build the app from ``settings`` (the environment by default) or ready-made ``services``
    (``sagas.bootstrap.build_services``)."""
    if services is None:
        settings = settings or Settings.from_env()
        configure_logging(json_output=settings.log_json)
        services = build_services(settings)
    settings = services.settings
    app = Flask("feed")
    app.config.update(
        SECRET_KEY=settings.signing_key("admin-sessions"),
        WTF_CSRF_SECRET_KEY=settings.signing_key("csrf"),
        MAX_CONTENT_LENGTH=settings.max_json_bytes,
        RATELIMIT_ENABLED=settings.rate_limits_enabled,
        RATELIMIT_STORAGE_URI=settings.limiter_storage_uri,
        RATELIMIT_STORAGE_OPTIONS={"socket_timeout": 1, "socket_connect_timeout": 1},
    )
    app.extensions["feed"] = services
    Migrate().init_app(app, None, directory=str(MIGRATIONS_DIR))
    app.config.update(
        # Only the operators' page has a session; the cookie holds its id (sagas/admin_sessions.py).
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # Behind TLS the cookie is Secure, and its __Host- name binds it to this host and path.
        SESSION_COOKIE_SECURE=settings.behind_tls,
        SESSION_COOKIE_NAME="__Host-session" if settings.behind_tls else "session",
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=settings.admin_session_max_seconds),
        WTF_CSRF_TIME_LIMIT=3600,
    )
    api = init_api(app)
    register_cli(app)
    app.cli.add_command(dead_letters_cli)
    install_sagas(app, api)
    if settings.trusted_proxies:
        # The client's address (rate limits, idempotency scopes) and scheme as the proxies in
        # front saw them; X-Forwarded-Host is not believed (links use PUBLIC_BASE_URL).
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
    app.wsgi_app = RequestDeadline(app.wsgi_app, settings.request_timeout_seconds, too_long)
    if settings.admission_max_concurrency:
        app.wsgi_app = Admission(
            app.wsgi_app,
            ceiling=settings.admission_max_concurrency,
            floor=min(settings.admission_min_concurrency, settings.admission_max_concurrency),
            queue_seconds=settings.admission_queue_ms / 1000,
            target_lag_seconds=settings.admission_target_lag_ms / 1000,
            hashing_free=services.passwords.slots.any_free,
        )
    return app


def install_sagas(app: Flask, api: Api) -> None:
    """The one place where the sagas join the feed (``feed`` never imports ``sagas``): their
    endpoints, operators' page and CLI, their metrics (their services: ``sagas.bootstrap``)."""
    services = app.extensions["feed"]
    for blueprint in (saga_api.blp, media_api.blp, queues_api.blp):
        api.register_blueprint(blueprint, url_prefix=API_PREFIX)
    NON_JSON_ENDPOINTS.add(media_api.UPLOAD_ENDPOINT)
    app.register_blueprint(admin_page)
    register_saga_cli(app)
    counts = at_most_every(  # a GROUP BY over every saga: not on each scrape
        services.settings.metrics_cache_seconds,
        lambda: counts_by_type_and_status(services.engine),
    )
    services.collectors.append(SagaCollector(counts))
