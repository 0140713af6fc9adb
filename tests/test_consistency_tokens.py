"""Consistency tokens name only positions a projection marks, are bound to the account that got
them, and expire: nobody can make reads wait on a position that never comes, or on someone
else's writes."""

from __future__ import annotations

import time

import pytest

from app import create_app
from sagas.bootstrap import build_services
from tests.test_publish_saga import upload


def token_of(response) -> dict[str, str]:
    return {"X-Consistency-Token": response.headers["X-Consistency-Token"]}


def test_a_command_that_projects_nothing_names_a_position_that_is_marked(
    client, make_account, project_all
):
    """A post with media starts a saga: its events are saga messages, which no projection
    marks. Its token names the last event the read model does project, so once that is
    projected the read is answered by Redis (it used to wait, then read PostgreSQL, forever)."""
    ada = make_account("ada_l")
    client.get("/api/v1/timelines/home", headers=ada.auth)
    media_id = upload(client, ada).get_json()["id"]
    posted = client.post(
        "/api/v1/posts", json={"body": "look", "media_ids": [media_id]}, headers=ada.auth
    )
    assert posted.status_code == 202
    project_all()

    for path in ("/api/v1/timelines/home", f"/api/v1/accounts/{ada.id}"):
        read = client.get(path, headers={**ada.auth, **token_of(posted)})
        assert read.status_code == 200
        assert read.headers["X-Read-Model"] == "redis", path


def test_a_token_is_refused_to_another_account_and_to_anonymous_readers(client, make_account):
    ada, bob = make_account("ada_l"), make_account("bob_b")
    posted = client.post("/api/v1/posts", json={"body": "mine"}, headers=ada.auth)
    post_path = f"/api/v1/posts/{posted.get_json()['id']}"

    for path in ("/api/v1/timelines/home", post_path, f"/api/v1/accounts/{ada.id}"):
        assert client.get(path, headers={**ada.auth, **token_of(posted)}).status_code == 200
        as_bob = client.get(path, headers={**bob.auth, **token_of(posted)})
        assert as_bob.status_code == 400, path
        assert as_bob.mimetype == "application/problem+json"
    assert client.get(post_path, headers=token_of(posted)).status_code == 400


@pytest.fixture
def patient_app(settings, clean_state):
    """Reads wait up to 5 s for a token's projection; tokens live 1 s."""
    app = create_app(
        services=build_services(
            settings.with_overrides(read_wait_ms=5000, consistency_token_ttl_seconds=1)
        )
    )
    yield app
    app.extensions["feed"].close()


def test_an_expired_token_no_longer_waits_and_still_reads_the_write(patient_app):
    client = patient_app.test_client()
    client.post("/api/v1/accounts", json={"handle": "ada_l", "password": "12345678"})
    session = client.post("/api/v1/sessions", json={"handle": "ada_l", "password": "12345678"})
    auth = {"Authorization": f"Bearer {session.get_json()['token']}"}
    client.get("/api/v1/timelines/home", headers=auth)
    posted = client.post("/api/v1/posts", json={"body": "not projected"}, headers=auth)
    time.sleep(1.1)  # the token expires; the post is not projected

    started = time.monotonic()
    read = client.get("/api/v1/timelines/home", headers={**auth, **token_of(posted)})
    waited = time.monotonic() - started

    assert read.headers["X-Read-Model"] == "postgres"  # the write, not the stale feed
    assert [p["id"] for p in read.get_json()["items"]] == [posted.get_json()["id"]]
    assert waited < 2.5  # a valid token would wait the whole 5 s for the projection


def test_a_token_past_its_hard_expiry_is_ignored_and_costs_no_sql(settings, clean_state):
    """Issue 28: a token past its TTL still made every read of its holder a PostgreSQL read."""
    from sqlalchemy import event

    app = create_app(
        services=build_services(
            settings.with_overrides(
                consistency_token_ttl_seconds=1, consistency_token_max_age_seconds=1
            )
        )
    )
    client = app.test_client()
    client.post("/api/v1/accounts", json={"handle": "ada_l", "password": "12345678"})
    session = client.post("/api/v1/sessions", json={"handle": "ada_l", "password": "12345678"})
    auth = {"Authorization": f"Bearer {session.get_json()['token']}"}
    client.get("/api/v1/timelines/home", headers=auth)
    posted = client.post("/api/v1/posts", json={"body": "not projected"}, headers=auth)
    time.sleep(1.1)  # past the hard expiry
    statements = []
    engine = app.extensions["feed"].engine
    count = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", count)
    try:
        read = client.get("/api/v1/timelines/home", headers={**auth, **token_of(posted)})
    finally:
        event.remove(engine, "before_cursor_execute", count)
        app.extensions["feed"].close()

    assert read.status_code == 200
    assert read.headers["X-Read-Model"] == "redis"
    assert statements == []
