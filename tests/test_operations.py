"""Liveness, readiness, metrics, and the OpenAPI document against the client contract."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from app import create_app
from feed.bootstrap import build_engine
from sagas.bootstrap import build_services

CONTRACT = Path(__file__).resolve().parent.parent.parent / "shared" / "API.md"
# The commands this service implements so far, as the contract writes them.
IMPLEMENTED = [
    ("post", "/accounts"),
    ("post", "/sessions"),
    ("post", "/posts"),
    ("delete", "/posts/{id}"),
    ("post", "/accounts/{id}/follow"),
    ("delete", "/accounts/{id}/follow"),
    ("put", "/posts/{id}/vote"),
]


def test_healthz_answers_ok(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "ok"}


def test_readyz_checks_postgres_redis_and_the_broker(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.get_json()["checks"] == {"postgres": "ok", "redis": "ok", "broker": "ok"}


def test_readyz_is_503_naming_what_is_down(settings, clean_state):
    down = settings.with_overrides(
        redis_url="redis://127.0.0.1:1/0", broker_url="amqp://guest:guest@127.0.0.1:1/%2F"
    )
    app = create_app(services=build_services(down))
    r = app.test_client().get("/readyz")
    app.extensions["feed"].close()
    assert r.status_code == 503
    assert r.mimetype == "application/problem+json"
    assert r.headers["Retry-After"]
    assert set(r.get_json()["errors"]) == {"redis", "broker"}


def test_a_command_with_postgres_down_is_503_with_retry_after(settings, clean_state):
    down = settings.with_overrides(database_url="postgresql://postgres@127.0.0.1:1/test")
    app = create_app(services=build_services(down))
    r = app.test_client().post("/api/v1/accounts", json={"handle": "ada_l", "password": "12345678"})
    app.extensions["feed"].close()
    assert r.status_code == 503
    assert r.mimetype == "application/problem+json"
    assert r.headers["Retry-After"]


def test_a_pooled_connection_the_server_closed_is_replaced_without_an_error(settings, engine):
    pool = build_engine(settings.database_url, pool_size=1)
    try:
        with pool.connect() as conn:
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with pool.connect() as conn:  # a live connection is reused, not replaced
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == first
        with engine.connect() as admin:
            assert admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": first}).scalar()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until the backend is gone
            with engine.connect() as admin:
                if not admin.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": first}
                ).scalar():
                    break
            time.sleep(0.02)
        with pool.connect() as conn:  # the dead one is dropped at checkout; no error here
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != first
    finally:
        pool.dispose()


def test_the_pool_keeps_the_connections_a_burst_opened(settings):
    """A burst of commands as wide as the pool opens its connections once: the next burst finds
    them there. (Overflow connections were closed as they came back, and every burst forked new
    PostgreSQL backends.)"""
    pool = build_engine(settings.database_url)
    width = 20  # the most a process's pool gives (a gevent worker's commands in flight)

    def burst() -> set[int]:
        connections = [pool.connect() for _ in range(width)]
        try:
            return {c.execute(text("SELECT pg_backend_pid()")).scalar_one() for c in connections}
        finally:
            for connection in connections:
                connection.close()

    try:
        first = burst()
        assert len(first) == width
        assert burst() == first
    finally:
        pool.dispose()


def test_metrics_are_prometheus_text(client):
    client.get("/healthz")
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.content_type.startswith("text/plain")
    assert 'feed_http_requests_total{endpoint="/healthz",method="GET",status="200"}' in r.get_data(
        as_text=True
    )


def test_responses_carry_a_request_id(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc"}).headers["X-Request-ID"] == "abc"
    assert len(client.get("/healthz").headers["X-Request-ID"]) == 32


def test_swagger_ui_is_served_at_docs(client):
    r = client.get("/docs")
    assert r.status_code == 200 and b"swagger" in r.data.lower()


@pytest.fixture
def openapi(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.get_json()


def test_openapi_lists_every_implemented_command_under_api_v1(openapi):
    paths = {re.sub(r"\{[^}]+\}", "{id}", path): ops for path, ops in openapi["paths"].items()}
    for method, path in IMPLEMENTED:
        assert method in paths.get("/api/v1" + path, {}), (method, path)


def test_every_implemented_command_is_in_the_contract(openapi):
    contract = CONTRACT.read_text()
    for method, path in IMPLEMENTED:
        assert f"`{method.upper()} {path}`" in contract, (method, path)


def test_openapi_documents_the_fields_of_the_contract(openapi):
    schemas = openapi["components"]["schemas"]
    assert set(schemas["RegisterAccountIn"]["properties"]) == {"handle", "password", "display_name"}
    assert set(schemas["AccountOut"]["properties"]) == {
        "id",
        "handle",
        "display_name",
        "created_at",
        "followers_count",
        "following_count",
        "posts_count",
    }
    assert set(schemas["PostOut"]["properties"]) == {
        "id",
        "author",
        "body",
        "media",
        "created_at",
        "status",
        "up",
        "down",
        "score",
        "my_vote",
    }
    assert set(schemas["VoteOut"]["properties"]) == {"post_id", "up", "down", "score", "my_vote"}
    assert set(schemas["SessionOut"]["properties"]) == {
        "token",
        "expires_at",
        "refresh_token",
        "refresh_expires_at",
        "account",
    }


def test_the_api_docs_work_offline(client):
    """/docs loads Swagger UI from this service (a pinned package), not from a CDN."""
    page = client.get("/docs")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "https://" not in html and "http://" not in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"):
        assert f"/docs/assets/{asset}" in html
        served = client.get(f"/docs/assets/{asset}")
        assert served.status_code == 200 and len(served.data) > 10_000, asset


def test_the_operational_endpoints_are_in_the_openapi_document(openapi):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert "get" in openapi["paths"][path], path
    assert "503" in openapi["paths"]["/readyz"]["get"]["responses"]
