"""Idempotency-Key: the same request again replays the first answer and does nothing twice."""

from __future__ import annotations

import threading
import time

from sqlalchemy import text

from tests.conftest import fetch_all


def test_a_retried_post_returns_the_first_answer_and_posts_once(client, engine, make_account):
    ada = make_account()
    headers = {**ada.auth, "Idempotency-Key": "abc-123"}

    first = client.post("/api/v1/posts", json={"body": "once"}, headers=headers)
    second = client.post("/api/v1/posts", json={"body": "once"}, headers=headers)

    assert first.status_code == second.status_code == 201
    assert first.get_data() == second.get_data()  # byte for byte
    assert first.headers["X-Consistency-Token"] == second.headers["X-Consistency-Token"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len(fetch_all(engine, "SELECT * FROM posts")) == 1
    assert len(fetch_all(engine, "SELECT * FROM outbox WHERE type = 'PostPublished'")) == 1


def test_a_post_answered_by_an_older_version_replays_as_stored(client, engine, make_account):
    """Records written before post answers were kept as text hold the JSON object."""
    ada = make_account()
    headers = {**ada.auth, "Idempotency-Key": "from-before"}
    first = client.post("/api/v1/posts", json={"body": "once"}, headers=headers)
    with engine.begin() as conn:
        conn.execute(text("UPDATE idempotency_keys SET body = (body #>> '{}')::jsonb"))

    again = client.post("/api/v1/posts", json={"body": "once"}, headers=headers)

    assert (again.status_code, again.get_json()) == (201, first.get_json())
    assert again.headers["Idempotent-Replayed"] == "true"


def test_every_command_replays(client, engine, make_account):
    ada, bob = make_account(), make_account()
    post_id = client.post("/api/v1/posts", json={"body": "x"}, headers=bob.auth).get_json()["id"]
    calls = [
        ("post", "/api/v1/accounts", {"handle": "carol", "password": "12345678"}, {}),
        ("post", "/api/v1/sessions", {"handle": "carol", "password": "12345678"}, {}),
        ("post", f"/api/v1/accounts/{bob.id}/follow", None, ada.auth),
        ("delete", f"/api/v1/accounts/{bob.id}/follow", None, ada.auth),
        ("put", f"/api/v1/posts/{post_id}/vote", {"value": 1}, ada.auth),
        ("delete", f"/api/v1/posts/{post_id}", None, bob.auth),
    ]
    for index, (method, path, body, auth) in enumerate(calls):
        headers = {**auth, "Idempotency-Key": f"key-{index}"}
        first = getattr(client, method)(path, json=body, headers=headers)
        events = fetch_all(engine, "SELECT position FROM outbox")
        again = getattr(client, method)(path, json=body, headers=headers)
        assert (again.status_code, again.get_data()) == (first.status_code, first.get_data()), path
        assert again.headers["Idempotent-Replayed"] == "true", path
        assert "Idempotent-Replayed" not in first.headers, path
        assert fetch_all(engine, "SELECT position FROM outbox") == events, path
    assert len(fetch_all(engine, "SELECT key FROM idempotency_keys")) == len(calls)


def test_a_replayed_login_answers_the_same_token_without_storing_it(client, engine, make_account):
    make_account("ada_l", password="12345678")
    headers = {"Idempotency-Key": "login-1"}
    body = {"handle": "ada_l", "password": "12345678"}

    first = client.post("/api/v1/sessions", json=body, headers=headers)
    again = client.post("/api/v1/sessions", json=body, headers=headers)

    assert first.get_json()["token"] == again.get_json()["token"]
    (stored,) = fetch_all(engine, "SELECT body::text AS body, fingerprint FROM idempotency_keys")
    assert first.get_json()["token"] not in stored["body"]
    assert "12345678" not in stored["body"]


def test_a_reused_key_with_another_request_is_422(client, engine, make_account):
    ada = make_account()
    headers = {**ada.auth, "Idempotency-Key": "abc-123"}
    client.post("/api/v1/posts", json={"body": "one"}, headers=headers)

    r = client.post("/api/v1/posts", json={"body": "two"}, headers=headers)

    assert r.status_code == 422
    assert r.mimetype == "application/problem+json"
    assert "Idempotency-Key" in r.get_json()["errors"]
    assert len(fetch_all(engine, "SELECT * FROM posts")) == 1


def test_a_command_that_failed_inside_its_transaction_is_not_remembered(
    client, engine, make_account
):
    """The follow failed (no such account yet), so nothing is stored and a retry runs."""
    ada = make_account()
    headers = {**ada.auth, "Idempotency-Key": "retry-me"}
    path = "/api/v1/accounts/{}/follow"
    assert client.post(path.format(999), headers=headers).status_code == 404
    assert fetch_all(engine, "SELECT * FROM idempotency_keys") == []
    taken = client.post(
        "/api/v1/accounts",
        json={"handle": ada.handle, "password": "12345678"},
        headers={"Idempotency-Key": "taken"},
    )
    assert taken.status_code == 409
    assert fetch_all(engine, "SELECT * FROM idempotency_keys") == []


def test_a_key_older_than_24_hours_runs_again(client, engine, make_account):
    ada = make_account()
    headers = {**ada.auth, "Idempotency-Key": "old"}
    client.post("/api/v1/posts", json={"body": "x"}, headers=headers)
    with engine.begin() as conn:
        conn.execute(text("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'"))

    r = client.post("/api/v1/posts", json={"body": "x"}, headers=headers)

    assert r.status_code == 201 and "Idempotent-Replayed" not in r.headers
    assert len(fetch_all(engine, "SELECT * FROM posts")) == 2


def test_the_purge_command_deletes_expired_records(app, client, engine, make_account):
    ada = make_account()
    for key in ("a", "b"):
        client.post(
            "/api/v1/posts", json={"body": key}, headers={**ada.auth, "Idempotency-Key": key}
        )
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE idempotency_keys SET created_at = now() - interval '2 days' WHERE key = 'a'"
            )
        )

    result = app.test_cli_runner().invoke(args=["idempotency", "purge"])

    assert "purged 1" in result.output
    assert [r["key"] for r in fetch_all(engine, "SELECT key FROM idempotency_keys")] == ["b"]


def test_a_key_still_in_flight_is_409(app, client, engine, make_account):
    """The first request is held inside its transaction; a second with the same key gets 409."""
    ada = make_account()
    headers = {**ada.auth, "Idempotency-Key": "slow"}
    blocker = engine.connect()
    tx = blocker.begin()
    # Hold ada's account row, so the first request waits inside its transaction, key claimed.
    blocker.execute(text("SELECT 1 FROM accounts WHERE id = :id FOR UPDATE"), {"id": int(ada.id)})
    first: dict = {}
    thread = threading.Thread(
        target=lambda: first.setdefault(
            "r", app.test_client().post("/api/v1/posts", json={"body": "x"}, headers=headers)
        )
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            waiting = fetch_all(
                engine,
                "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()",
            )[0]["n"]
            if waiting:
                break
            time.sleep(0.02)

        second = client.post("/api/v1/posts", json={"body": "x"}, headers=headers)

        assert second.status_code == 409
        assert second.mimetype == "application/problem+json"
    finally:
        tx.rollback()
        blocker.close()
        thread.join(10)
    assert first["r"].status_code == 201
    third = client.post("/api/v1/posts", json={"body": "x"}, headers=headers)
    assert third.status_code == 201 and third.get_json() == first["r"].get_json()
    assert len(fetch_all(engine, "SELECT * FROM posts")) == 1


def test_the_sweeper_purges_expired_records_when_it_starts_and_hourly(
    settings, client, engine, make_account
):
    """Issue 28: expired records (bodies, handles, names) went only when purged by hand."""
    from sagas import sweeper

    ada = make_account()
    for key in ("old", "new"):
        client.post(
            "/api/v1/posts", json={"body": key}, headers={**ada.auth, "Idempotency-Key": key}
        )
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' "
                "WHERE key = 'old'"
            )
        )
    with engine.begin() as conn:  # and an operator's web session, idle for a day
        conn.execute(
            text(
                "INSERT INTO admin_sessions (id_hash, account_id, last_seen_at) "
                "VALUES ('idle', 1, now() - interval '1 day')"
            )
        )
    stop = threading.Event()
    running = threading.Thread(target=sweeper.run, args=(settings, stop))
    running.start()
    try:
        deadline = time.monotonic() + 5
        while (
            time.monotonic() < deadline
            and len(fetch_all(engine, "SELECT key FROM idempotency_keys")) > 1
        ):
            time.sleep(0.05)
    finally:
        stop.set()
        running.join()
    assert [r["key"] for r in fetch_all(engine, "SELECT key FROM idempotency_keys")] == ["new"]
    assert fetch_all(engine, "SELECT * FROM admin_sessions") == []
    assert sweeper.HOURLY_SECONDS == 3600


def test_an_erased_account_leaves_no_records_and_its_login_never_replays(
    app, client, engine, make_account
):
    """Issue 28: a login replayed after erasure answered 200, a fresh token and the name."""
    from sagas.services import inject_fault
    from tests.conftest import drain
    from tests.test_promote_saga import settle

    login = {"handle": "ada_l", "password": "12345678"}
    client.post(
        "/api/v1/accounts",
        json={**login, "display_name": "Ada Lovelace"},
        headers={"Idempotency-Key": "sign-up"},
    )
    replay = {"Idempotency-Key": "log-in"}
    session = client.post("/api/v1/sessions", json=login, headers=replay)
    auth = {"Authorization": f"Bearer {session.get_json()['token']}"}
    client.post("/api/v1/posts", json={"body": "diary"}, headers={**auth, "Idempotency-Key": "p"})
    others = make_account("bob_b")
    client.post(
        "/api/v1/posts", json={"body": "bob's"}, headers={**others.auth, "Idempotency-Key": "p"}
    )

    with engine.begin() as conn:  # the saga stops after disabling logins, for a while
        inject_fault(conn, "feed", "purge_posts", "transient", 100)
    assert client.delete("/api/v1/accounts/me", headers=auth).status_code == 202
    drain(app.extensions["feed"])
    while_disabled = client.post("/api/v1/sessions", json=login, headers=replay)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM participant_faults"))
    settle(app)
    after_erasure = client.post("/api/v1/sessions", json=login, headers=replay)

    for refused in (while_disabled, after_erasure):
        assert refused.status_code == 401, refused.get_json()
        assert refused.mimetype == "application/problem+json"
        assert "Lovelace" not in refused.get_data(as_text=True)
    (account,) = fetch_all(
        engine, "SELECT status FROM accounts WHERE id = :id", id=session.get_json()["account"]["id"]
    )
    assert account["status"] == "deleted"
    left = fetch_all(engine, "SELECT scope, key FROM idempotency_keys")
    assert left == [{"scope": others.id, "key": "p"}]
