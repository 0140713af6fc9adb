"""Rate limits on Redis: a login burst gets 429 with Retry-After; other commands are looser."""

from __future__ import annotations

import pytest

from app import create_app
from sagas.bootstrap import build_services


@pytest.fixture
def limited_app(settings, clean_state):
    limited = settings.with_overrides(
        rate_limits_enabled=True, rate_limit_sessions="3/minute", rate_limit_commands="5/minute"
    )
    application = create_app(services=build_services(limited))
    yield application
    application.extensions["feed"].close()


def test_a_brute_force_burst_on_sessions_is_429_with_retry_after(limited_app):
    client = limited_app.test_client()
    client.post("/api/v1/accounts", json={"handle": "ada_l", "password": "12345678"})
    attempts = [
        client.post("/api/v1/sessions", json={"handle": "ada_l", "password": f"guess{i:04d}"})
        for i in range(6)
    ]

    assert [r.status_code for r in attempts] == [401, 401, 401, 429, 429, 429]
    blocked = attempts[-1]
    assert blocked.mimetype == "application/problem+json"
    assert blocked.get_json()["status"] == 429
    assert 0 < int(blocked.headers["Retry-After"]) <= 60
    # The right password is refused too while the limit holds.
    right = client.post("/api/v1/sessions", json={"handle": "ada_l", "password": "12345678"})
    assert right.status_code == 429


def test_guesses_at_one_handle_from_many_addresses_are_limited(settings, clean_state):
    limited = settings.with_overrides(
        rate_limits_enabled=True, rate_limit_sessions="100/minute", rate_limit_handle="4/hour"
    )
    app = create_app(services=build_services(limited))
    client = app.test_client()
    client.post("/api/v1/accounts", json={"handle": "ada_l", "password": "12345678"})
    statuses = [
        client.post(
            "/api/v1/sessions",
            json={"handle": "ada_l", "password": f"guess{i:04d}"},
            environ_base={"REMOTE_ADDR": f"10.0.0.{i}"},
        ).status_code
        for i in range(6)
    ]
    other = client.post("/api/v1/sessions", json={"handle": "bob_b", "password": "whatever1"})
    app.extensions["feed"].close()
    assert statuses == [401] * 4 + [429] * 2
    assert other.status_code == 401  # another handle is not blocked


def test_commands_have_their_own_per_account_limit(limited_app):
    client = limited_app.test_client()
    client.post("/api/v1/accounts", json={"handle": "ada_l", "password": "12345678"})
    token = client.post(
        "/api/v1/sessions", json={"handle": "ada_l", "password": "12345678"}
    ).get_json()["token"]
    auth = {"Authorization": f"Bearer {token}"}

    statuses = [
        client.post("/api/v1/posts", json={"body": f"p{i}"}, headers=auth).status_code
        for i in range(7)
    ]

    assert statuses == [201] * 5 + [429] * 2


def test_reads_are_not_counted_against_the_command_limit(limited_app):
    client = limited_app.test_client()
    assert all(client.get("/healthz").status_code == 200 for _ in range(10))


def test_limits_are_off_when_disabled(client, make_account):
    make_account("ada_l", password="12345678")
    statuses = {
        client.post(
            "/api/v1/sessions", json={"handle": "ada_l", "password": "wrong-one"}
        ).status_code
        for _ in range(15)
    }
    assert statuses == {401}
