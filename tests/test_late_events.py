"""Events that arrive after Redis lost its data (a restart without persistence, FLUSHALL, a
failover to a lagging replica): an event's first try fails, later events of the same keys are
projected, Redis is emptied, then the event is tried again. Whatever it finds, what clients read
afterwards is what a rebuild from PostgreSQL gives: no old event's payload shadows PostgreSQL."""

from __future__ import annotations

import pytest
import redis

from feed.outbox import claim_batch
from feed.projections import apply_fan_out_page, project
from tests.conftest import READ_MODELS, flush_read_model, settings_on


@pytest.fixture(params=READ_MODELS)
def settings(request, database_url):
    return settings_on(request.param, request, database_url)


def follow(client, me, them):
    assert client.post(f"/api/v1/accounts/{them.id}/follow", headers=me.auth).status_code == 200


def unfollow(client, me, them):
    assert client.delete(f"/api/v1/accounts/{them.id}/follow", headers=me.auth).status_code == 200


def post(client, me, body="hello"):
    response = client.post("/api/v1/posts", json={"body": body}, headers=me.auth)
    assert response.status_code == 201
    return response.get_json()["id"]


def vote(client, me, post_id, value):
    response = client.put(f"/api/v1/posts/{post_id}/vote", json={"value": value}, headers=me.auth)
    assert response.status_code == 200


def everything_read(client, accounts, post_ids) -> dict:
    """What each account reads: its home feed, its posts, its profile; and each post."""
    seen = {}
    for me in accounts:
        home = client.get("/api/v1/timelines/home?limit=40", headers=me.auth).get_json()
        mine = client.get(f"/api/v1/accounts/{me.id}/posts?limit=40", headers=me.auth)
        profile = client.get(f"/api/v1/accounts/{me.id}")
        seen[me.id] = (
            [(p["id"], p["up"], p["down"], p["my_vote"]) for p in home["items"]],
            [(p["id"], p["up"], p["down"]) for p in mine.get_json().get("items", [])],
            profile.status_code,
            profile.get_json(),
        )
    for post_id in post_ids:
        response = client.get(f"/api/v1/posts/{post_id}")
        seen[post_id] = (response.status_code, response.get_json())
    return seen


# Each scenario: (the commands before the late event, the late event's own command, the
# commands after it whose events are projected before the loss). Accounts a, b, c; every feed
# is live before the late event.
def registered(client, a, b, c, make_account):
    late = make_account("latecomer")  # its AccountRegistered is the late event
    return late, lambda: [follow(client, a, late), follow(client, b, late), post(client, late)]


def published(client, a, b, c, make_account):
    follow(client, b, a)
    hers = post(client, a, "late")
    return hers, lambda: [
        vote(client, b, hers, 1),
        vote(client, c, hers, -1),
        vote(client, a, hers, 1),
    ]


def deleted(client, a, b, c, make_account):
    follow(client, b, a)
    hers = post(client, a, "doomed")
    vote(client, c, hers, 1)
    assert client.delete(f"/api/v1/posts/{hers}", headers=a.auth).status_code == 204
    return hers, lambda: [post(client, a, "after")]


def followed(client, a, b, c, make_account):
    post(client, a, "before the follow")
    follow(client, b, a)
    return None, lambda: [follow(client, c, a), unfollow(client, b, a), post(client, a)]


def unfollowed(client, a, b, c, make_account):
    follow(client, b, a)
    post(client, a, "before the unfollow")
    unfollow(client, b, a)
    return None, lambda: [follow(client, b, a), follow(client, c, a)]


def voted(client, a, b, c, make_account):
    hers = post(client, a)
    vote(client, b, hers, 1)
    return hers, lambda: [vote(client, b, hers, -1), vote(client, c, hers, 1)]


SCENARIOS = {
    "AccountRegistered": registered,
    "PostPublished": published,
    "PostDeleted": deleted,
    "AccountFollowed": followed,
    "AccountUnfollowed": unfollowed,
    "VoteCast": voted,
}


@pytest.mark.parametrize("event_type", list(SCENARIOS))
def test_an_event_retried_after_redis_lost_everything_leaves_postgresql_s_state(
    app, client, make_account, engine, project_all, monkeypatch, event_type
):
    store = app.extensions["feed"].store
    a, b, c = (make_account(name) for name in ("ann", "bob", "cyd"))
    for me in (a, b, c):
        client.get("/api/v1/timelines/home", headers=me.auth)
    project_all()
    subject, after = SCENARIOS[event_type](client, a, b, c, make_account)
    with engine.begin() as conn:
        pending = claim_batch(conn, 1000)
    (late,) = [e for e in pending if e.type == event_type][-1:]
    send = lambda page: apply_fan_out_page(store, page)  # noqa: E731

    # The first try: Redis does not answer.
    def down(*args, **kwargs):
        raise redis.ConnectionError("Redis is down")

    with monkeypatch.context() as patch:
        patch.setattr(store, "run", down)
        patch.setattr(store, "execute", down)
        with pytest.raises(redis.ConnectionError):
            project(store, late, send)
    # Everything else is projected meanwhile (the events before it, and those after).
    for envelope in pending:
        if envelope is not late:
            project(store, envelope, send)
    after()
    project_all()
    # Redis loses everything; then the late event's retry.
    flush_read_model(store.redis)
    project(store, late, send)

    accounts = [a, b, c] + ([subject] if event_type == "AccountRegistered" else [])
    post_ids = [subject] if isinstance(subject, str) else []
    served = everything_read(client, accounts, post_ids)
    flush_read_model(store.redis)
    assert app.test_cli_runner().invoke(args=["feeds", "rebuild"]).exit_code == 0
    assert served == everything_read(client, accounts, post_ids)
