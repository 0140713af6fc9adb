"""A read model that outlives the database it was built from: the service started against a new
database, or against its own database restored from a backup, with a Redis that kept the old
read model. Reads must show this database's state (a new post in its author's feed read with
the post's token, no post the restore took back), not the read model's past."""

from __future__ import annotations

import pytest

from app import create_app
from feed.keys import feed_key
from sagas.bootstrap import build_services
from tests.conftest import READ_MODELS, drain, flush_read_model, new_database, settings_on


@pytest.fixture(params=READ_MODELS)
def read_model(request):
    return request.param


@pytest.fixture
def start(request, read_model):
    """Start the service (in this process) against a database; stopped afterwards."""
    apps = []

    def started(url: str):
        app = create_app(services=build_services(settings_on(read_model, request, url)))
        apps.append(app)
        return app

    yield started
    for app in apps:
        app.extensions["feed"].close()


@pytest.fixture
def empty_read_model(request, read_model, database_url):
    from feed.bootstrap import build_store_clients

    client, _ = build_store_clients(settings_on(read_model, request, database_url))
    flush_read_model(client)
    yield client
    client.close()


def register(client, handle: str) -> dict:
    credentials = {"handle": handle, "password": "12345678"}
    assert client.post("/api/v1/accounts", json=credentials).status_code == 201
    session = client.post("/api/v1/sessions", json=credentials).get_json()
    return {"id": session["account"]["id"], "auth": {"Authorization": f"Bearer {session['token']}"}}


def busy_past(app, n: int = 12) -> dict:
    """An account that posts ``n`` times, every event projected: outbox positions, their
    applied markers, a feed."""
    client = app.test_client()
    me = register(client, "old_timer")
    client.get("/api/v1/timelines/home", headers=me["auth"])
    for i in range(n):
        client.post("/api/v1/posts", json={"body": f"old {i}"}, headers=me["auth"])
    drain(app.extensions["feed"])
    return me


def a_post_reads_back_with_its_token(app) -> None:
    """A new account reads its feed (it exists in Redis), posts, and reads its feed with the
    post's consistency token before any projection ran: the post is there."""
    client = app.test_client()
    me = register(client, "newcomer")
    assert client.get("/api/v1/timelines/home", headers=me["auth"]).get_json()["items"] == []
    for i in range(3):  # the positions of these events were applied in the old read model
        posted = client.post("/api/v1/posts", json={"body": f"new {i}"}, headers=me["auth"])
        assert posted.status_code == 201
        token = {"X-Consistency-Token": posted.headers["X-Consistency-Token"]}
        page = client.get("/api/v1/timelines/home", headers={**me["auth"], **token})
        assert posted.get_json()["id"] in [p["id"] for p in page.get_json()["items"]], i


def test_a_read_model_of_another_database_is_not_served(start, empty_read_model):
    with new_database() as first, new_database() as second:
        old = start(first)
        busy_past(old)
        empty_read_model.set("not-ours", 1)  # another user of this Redis

        new = start(second)

        a_post_reads_back_with_its_token(new)
        assert empty_read_model.get("not-ours") == b"1"


def test_a_read_model_ahead_of_a_restored_database_is_not_served(start, empty_read_model):
    with new_database() as live:
        app = start(live)
        me = busy_past(app, n=2)
        app.extensions["feed"].engine.dispose()  # a copy needs the database to itself
        with new_database(template=live) as backup:
            client = app.test_client()
            later = [  # after the backup: a restore takes these back
                client.post(
                    "/api/v1/posts", json={"body": f"lost {i}"}, headers=me["auth"]
                ).get_json()["id"]
                for i in range(10)
            ]
            drain(app.extensions["feed"])
            assert len(app.extensions["feed"].redis.zrange(feed_key(me["id"]), 0, -1)) == 13

            restored = start(backup)

            page = restored.test_client().get("/api/v1/timelines/home", headers=me["auth"])
            assert [p["body"] for p in page.get_json()["items"]] == ["old 1", "old 0"]
            assert restored.test_client().get(f"/api/v1/posts/{later[0]}").status_code == 404
            a_post_reads_back_with_its_token(restored)
