"""Logins that last (API.md, "Sessions that last"): refresh tokens rotate, a spent one reused
ends its login, logout and a password change end the tokens they should, and password hashing
is a bounded resource that answers 503 at once rather than queue."""

from __future__ import annotations

import time

import pytest
from argon2 import PasswordHasher, Type
from sqlalchemy import text

from app import create_app
from feed.auth import Principal
from feed.hash_slots import HashSlots, cores
from sagas.bootstrap import build_services
from tests.conftest import make_settings

PASSWORD = "correct horse battery"


@pytest.fixture
def settings(database_url):
    # Revocations reach this process's status cache at once (the cache's few seconds are
    # tested on their own below).
    return make_settings(database_url, account_status_cache_seconds=0.0)


def register(client, handle: str, password: str = PASSWORD) -> int:
    created = client.post("/api/v1/accounts", json={"handle": handle, "password": password})
    assert created.status_code == 201, created.get_json()
    return created.get_json()["id"]


def log_in(client, handle: str, password: str = PASSWORD) -> dict:
    response = client.post("/api/v1/sessions", json={"handle": handle, "password": password})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def refresh(client, refresh_token: str):
    return client.post("/api/v1/sessions/refresh", json={"refresh_token": refresh_token})


def me(client, token: str) -> int:
    return client.get(
        "/api/v1/timelines/home", headers={"Authorization": f"Bearer {token}"}
    ).status_code


def age_rotation(engine, seconds: float) -> None:
    """Move every login's last rotation ``seconds`` into the past."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE account_sessions SET rotated_at = rotated_at - make_interval(secs => :s)"),
            {"s": seconds},
        )


def test_a_login_answers_a_short_access_token_and_a_long_refresh_token(client, settings):
    register(client, "ada")
    session = log_in(client, "ada")
    assert session["refresh_token"] and session["refresh_token"] != session["token"]
    expires = time.mktime(time.strptime(session["expires_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    refresh_expires = time.mktime(
        time.strptime(session["refresh_expires_at"][:19], "%Y-%m-%dT%H:%M:%S")
    )
    assert refresh_expires - expires == pytest.approx(
        settings.refresh_token_ttl_seconds - settings.token_ttl_seconds, abs=2
    )
    assert me(client, session["token"]) == 200


def test_the_refresh_token_is_kept_only_as_its_hash(client, engine):
    register(client, "ada")
    session = log_in(client, "ada")
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT * FROM account_sessions")).mappings().one()
    assert session["refresh_token"].encode() not in repr(dict(stored)).encode()
    assert len(stored["refresh_hash"]) == 32


def test_a_refresh_rotates_and_a_retry_within_the_grace_answers_the_same_pair(client):
    register(client, "ada")
    first = log_in(client, "ada")
    time.sleep(1.1)  # a new access token is signed at another second
    second = refresh(client, first["refresh_token"])
    assert second.status_code == 200, second.get_json()
    pair = second.get_json()
    assert pair["refresh_token"] != first["refresh_token"]
    assert pair["token"] != first["token"]
    assert pair["account"]["handle"] == "ada"
    assert me(client, pair["token"]) == 200

    retried = refresh(client, first["refresh_token"])  # its answer was lost
    assert retried.status_code == 200
    assert retried.get_json()["token"] == pair["token"]
    assert retried.get_json()["refresh_token"] == pair["refresh_token"]

    third = refresh(client, pair["refresh_token"])
    assert third.status_code == 200
    assert me(client, third.get_json()["token"]) == 200


def test_a_spent_refresh_token_reused_after_the_grace_ends_the_whole_login(client, engine):
    register(client, "ada")
    stolen = log_in(client, "ada")
    other_device = log_in(client, "ada")
    current = refresh(client, stolen["refresh_token"]).get_json()
    age_rotation(engine, 31)

    reused = refresh(client, stolen["refresh_token"])
    assert reused.status_code == 401
    assert reused.headers["Content-Type"] == "application/problem+json"
    # Every token of that login: the current refresh token, the access tokens.
    assert refresh(client, current["refresh_token"]).status_code == 401
    assert me(client, current["token"]) == 401
    assert me(client, stolen["token"]) == 401
    # Another login of the account goes on.
    assert me(client, other_device["token"]) == 200
    assert refresh(client, other_device["refresh_token"]).status_code == 200


def test_a_forged_or_unknown_refresh_token_ends_nothing(client):
    register(client, "ada")
    session = log_in(client, "ada")
    login_id, generation, mac = session["refresh_token"].split(".")
    for forged, status in (
        (f"{login_id}.{generation}.{'A' * 43}", 401),  # a MAC not made with the key
        (f"{login_id}.7.{mac}", 401),  # another generation under this one's MAC
        ("not a token", 401),
        ("", 422),  # refused by validation: at least one character
    ):
        assert refresh(client, forged).status_code == status, forged
    assert refresh(client, session["refresh_token"]).status_code == 200


def test_logout_ends_that_login_only(client):
    register(client, "ada")
    phone = log_in(client, "ada")
    laptop = log_in(client, "ada")
    out = client.delete(
        "/api/v1/sessions/current", headers={"Authorization": f"Bearer {phone['token']}"}
    )
    assert out.status_code == 204
    assert me(client, phone["token"]) == 401
    assert refresh(client, phone["refresh_token"]).status_code == 401
    assert me(client, laptop["token"]) == 200
    assert refresh(client, laptop["refresh_token"]).status_code == 200


def change_password(client, token: str, current: str, new: str):
    return client.put(
        "/api/v1/accounts/me/password",
        json={"current_password": current, "new_password": new},
        headers={"Authorization": f"Bearer {token}"},
    )


def test_a_password_change_ends_every_login_of_the_account(client, app):
    register(client, "ada")
    register(client, "bob")
    phone = log_in(client, "ada")
    laptop = log_in(client, "ada")
    bob = log_in(client, "bob")
    # A token from before logins were kept (it names none) ends too.
    legacy, _ = app.extensions["feed"].tokens.issue(Principal(phone["account"]["id"], False))
    assert me(client, legacy) == 200

    wrong = change_password(client, phone["token"], "not my password", "a new password")
    assert wrong.status_code == 401
    assert me(client, phone["token"]) == 200  # nothing changed

    changed = change_password(client, phone["token"], PASSWORD, "a new password")
    assert changed.status_code == 204
    for ended in (phone, laptop):
        assert me(client, ended["token"]) == 401
        assert refresh(client, ended["refresh_token"]).status_code == 401
    assert me(client, legacy) == 401
    assert me(client, bob["token"]) == 200
    failed = client.post("/api/v1/sessions", json={"handle": "ada", "password": PASSWORD})
    assert failed.status_code == 401
    assert me(client, log_in(client, "ada", "a new password")["token"]) == 200


def test_logout_with_a_token_from_before_logins_were_kept_ends_it(client, app):
    account = register(client, "ada")
    legacy, _ = app.extensions["feed"].tokens.issue(Principal(account, False))
    out = client.delete("/api/v1/sessions/current", headers={"Authorization": f"Bearer {legacy}"})
    assert out.status_code == 204
    assert me(client, legacy) == 401
    assert me(client, log_in(client, "ada")["token"]) == 200


def test_a_revocation_reaches_another_process_within_its_status_cache(database_url, client):
    """Another process (its own status cache, here a second app) refuses the ended login
    within ACCOUNT_STATUS_CACHE_SECONDS, without a query per request in between."""
    other_settings = make_settings(database_url, account_status_cache_seconds=1.0)
    other = create_app(services=build_services(other_settings)).test_client()
    register(client, "ada")
    session = log_in(client, "ada")
    assert me(other, session["token"]) == 200  # its standing is cached now
    out = client.delete(
        "/api/v1/sessions/current", headers={"Authorization": f"Bearer {session['token']}"}
    )
    assert out.status_code == 204
    deadline = time.monotonic() + 3
    while me(other, session["token"]) == 200:
        assert time.monotonic() < deadline, "the other process never saw the logout"
        time.sleep(0.1)


def test_a_login_rehashes_a_password_hashed_with_other_parameters(client, engine, settings):
    register(client, "ada")
    old = PasswordHasher(time_cost=1, memory_cost=4096, parallelism=2, type=Type.ID)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE accounts SET password_hash = :h WHERE handle = 'ada'"),
            {"h": old.hash(PASSWORD)},
        )
    log_in(client, "ada")
    with engine.connect() as conn:
        stored = conn.execute(
            text("SELECT password_hash FROM accounts WHERE handle = 'ada'")
        ).scalar_one()
    current = PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_cost,
        parallelism=settings.argon2_parallelism,
        type=Type.ID,
    )
    assert not current.check_needs_rehash(stored)
    assert current.verify(stored, PASSWORD)
    log_in(client, "ada")  # the new hash opens it


@pytest.fixture(params=["at admission", "in the view"])
def one_slot(request, database_url, tmp_path, clean_state):
    """An app with one hashing slot, a 20 ms wait, and that slot's file for the test to hold
    (as another process's login would). Admission control refuses a login at once while no
    slot is free; without it (or when a slot is taken between its look and the hash), the
    view's wait for a slot refuses it."""
    admission = {} if request.param == "at admission" else {"admission_max_concurrency": 0}
    settings = make_settings(
        database_url,
        data_dir=tmp_path,
        hash_cpu_share=1 / cores(),
        hash_wait_ms=20,
        **admission,
    )
    app = create_app(services=build_services(settings))
    holder = HashSlots(tmp_path / "hash-slots", 1.0, 0.0, machine_cores=1)
    return app.test_client(), holder


def test_no_hashing_slot_free_answers_503_at_once(one_slot):
    client, holder = one_slot
    register(client, "ada")
    with holder.slot():  # another process is hashing
        for request in (
            lambda: client.post("/api/v1/sessions", json={"handle": "ada", "password": PASSWORD}),
            lambda: client.post("/api/v1/accounts", json={"handle": "bob", "password": PASSWORD}),
        ):
            started = time.perf_counter()
            refused = request()
            waited = time.perf_counter() - started
            assert refused.status_code == 503, refused.get_json()
            assert refused.headers["Content-Type"] == "application/problem+json"
            assert int(refused.headers["Retry-After"]) >= 1
            assert waited < 0.5, waited
    assert log_in(client, "ada")["token"]  # the slot is free again


def test_a_refused_login_holds_no_database_connection(one_slot, engine):
    """The slot is taken before the unit of work opens: a login refused for want of one has
    given its pooled connection back (it read the account's hash on it, briefly)."""
    client, holder = one_slot
    register(client, "ada")
    pool = client.application.extensions["feed"].engine.pool
    with holder.slot():
        assert (
            client.post(
                "/api/v1/sessions", json={"handle": "ada", "password": PASSWORD}
            ).status_code
            == 503
        )
        assert pool.checkedout() == 0
