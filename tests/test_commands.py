"""Each command: its answer, the rows it writes and the outbox events it writes with them."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from sqlalchemy import event as sa_event

from tests.conftest import fetch_all, outbox_events

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_registering_an_account_writes_the_account_and_account_registered(client, engine):
    r = client.post(
        "/api/v1/accounts",
        json={"handle": "ada_l", "password": "analytical engine", "display_name": "Ada"},
    )

    assert r.status_code == 201
    body = r.get_json()
    assert body["handle"] == "ada_l" and body["display_name"] == "Ada"
    assert isinstance(body["id"], str) and body["id"].isdigit()
    assert RFC3339.match(body["created_at"])
    assert (body["followers_count"], body["following_count"], body["posts_count"]) == (0, 0, 0)
    assert "password" not in body and "password_hash" not in body
    assert r.headers["X-Consistency-Token"]
    (row,) = fetch_all(engine, "SELECT * FROM accounts")
    assert str(row["id"]) == body["id"]
    assert row["password_hash"].startswith("$argon2id$")
    assert row["is_admin"] is False and row["status"] == "active"
    (event,) = outbox_events(engine)
    assert event["type"] == "AccountRegistered" and event["version"] == 1
    assert event["payload"]["account_id"] == body["id"]
    assert event["payload"]["handle"] == "ada_l"


def test_display_name_defaults_to_the_handle(client):
    r = client.post("/api/v1/accounts", json={"handle": "grace", "password": "cobol rules!"})
    assert r.get_json()["display_name"] == "grace"


def test_a_taken_handle_is_a_conflict_and_writes_nothing(client, engine, make_account):
    make_account("ada_l")
    before = outbox_events(engine)

    r = client.post("/api/v1/accounts", json={"handle": "ada_l", "password": "another one"})

    assert r.status_code == 409
    assert r.mimetype == "application/problem+json"
    assert "handle" in r.get_json()["errors"]
    assert len(fetch_all(engine, "SELECT id FROM accounts")) == 1
    assert outbox_events(engine) == before


def test_logging_in_returns_a_token_its_expiry_and_the_account(client, make_account):
    ada = make_account("ada_l", password="analytical engine")

    r = client.post("/api/v1/sessions", json={"handle": "ada_l", "password": "analytical engine"})

    assert r.status_code == 200
    body = r.get_json()
    assert body["token"] and RFC3339.match(body["expires_at"])
    assert body["account"]["id"] == ada.id and body["account"]["handle"] == "ada_l"


def test_a_wrong_password_and_an_unknown_handle_get_the_same_401(client, make_account):
    make_account("ada_l", password="analytical engine")

    wrong = client.post("/api/v1/sessions", json={"handle": "ada_l", "password": "difference"})
    unknown = client.post("/api/v1/sessions", json={"handle": "nobody", "password": "difference"})

    assert wrong.status_code == unknown.status_code == 401
    assert wrong.mimetype == unknown.mimetype == "application/problem+json"
    assert wrong.get_json()["detail"] == unknown.get_json()["detail"]


def test_logging_in_writes_no_event_and_marks_the_account_active(client, engine, make_account):
    make_account("ada_l")
    engine_rows = fetch_all(engine, "SELECT last_active_at FROM accounts")
    events = outbox_events(engine)

    client.post("/api/v1/sessions", json={"handle": "ada_l", "password": "correct horse battery"})

    assert outbox_events(engine) == events
    assert (
        fetch_all(engine, "SELECT last_active_at FROM accounts")[0]["last_active_at"]
        >= (engine_rows[0]["last_active_at"])
    )


def test_publishing_a_post_writes_the_post_the_counter_and_post_published(
    client, engine, make_account
):
    ada = make_account("ada_l")

    r = client.post("/api/v1/posts", json={"body": "Hello, engine"}, headers=ada.auth)

    assert r.status_code == 201
    post = r.get_json()
    assert post["status"] == "published" and post["body"] == "Hello, engine"
    assert post["author"] == {"id": ada.id, "handle": "ada_l", "display_name": "ada_l"}
    assert (post["up"], post["down"], post["score"], post["media"]) == (0, 0, 0, [])
    assert post["my_vote"] == 0
    (row,) = fetch_all(engine, "SELECT * FROM posts")
    assert str(row["id"]) == post["id"] and row["status"] == "published"
    assert fetch_all(engine, "SELECT posts_count FROM accounts")[0]["posts_count"] == 1
    event = outbox_events(engine)[-1]
    assert event["type"] == "PostPublished"
    assert event["payload"]["post_id"] == post["id"]
    assert event["payload"]["author_id"] == ada.id
    assert "author_counts" not in event["payload"]  # the projection reads them
    assert event["payload"]["author"] == {"id": ada.id, "handle": "ada_l", "display_name": "ada_l"}


@contextlib.contextmanager
def statements_seen(engine) -> Iterator[list[tuple[str, str]]]:
    """Each statement sent while in the block: its first word and the connection's transaction
    status after it (IDLE: it committed by itself; INTRANS: a transaction is open)."""
    seen: list[tuple[str, str]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        status = conn.connection.driver_connection.info.transaction_status
        seen.append((statement.split(None, 1)[0], status.name))

    sa_event.listen(engine, "after_cursor_execute", record)
    try:
        yield seen
    finally:
        sa_event.remove(engine, "after_cursor_execute", record)


def test_a_post_is_a_read_and_one_statement_that_commits_by_itself_unless_it_has_a_key(
    client, engine, make_account
):
    """No BEGIN/COMMIT round trips for a post: a read, then one statement that writes the rows
    and the event (the author's row stays locked only while it runs); with an Idempotency-Key
    its record must commit with them, so a transaction. The pooled connection goes back to
    transactions for the next command."""
    ada = make_account("ada_l")

    with statements_seen(engine) as alone:
        assert client.post("/api/v1/posts", json={"body": "a"}, headers=ada.auth).status_code == 201
    keyed = {**ada.auth, "Idempotency-Key": "k-1"}
    with statements_seen(engine) as with_key:
        assert client.post("/api/v1/posts", json={"body": "b"}, headers=keyed).status_code == 201
    post_id = client.post("/api/v1/posts", json={"body": "c"}, headers=ada.auth).get_json()["id"]
    with statements_seen(engine) as delete:
        assert client.delete(f"/api/v1/posts/{post_id}", headers=ada.auth).status_code == 204

    assert alone == [("SELECT", "IDLE"), ("WITH", "IDLE")]  # each committed as it ran
    assert ("WITH", "INTRANS") in with_key and all(s == "INTRANS" for _, s in with_key)
    assert delete and all(status == "INTRANS" for _, status in delete)


def test_a_follow_and_an_unfollow_are_one_statement_each(client, engine, make_account):
    """The followee's row (a popular account's) is locked only while the statement runs."""
    ada, bob = make_account("ada_l"), make_account("bob_b")
    url = f"/api/v1/accounts/{bob.id}/follow"

    with statements_seen(engine) as follow:
        assert client.post(url, headers=ada.auth).get_json() == {"following": True}
    with statements_seen(engine) as again:
        assert client.post(url, headers=ada.auth).get_json() == {"following": True}
    with statements_seen(engine) as unfollow:
        assert client.delete(url, headers=ada.auth).get_json() == {"following": False}

    # "again" changed nothing, so its consistency token reads the outbox's end: a second query
    assert follow == unfollow == [("WITH", "IDLE")]
    assert again[0] == ("WITH", "IDLE")


def test_a_vote_is_one_statement_that_commits_by_itself_unless_it_has_a_key(
    client, engine, make_account
):
    """As a post: a popular post's row is locked only while a vote's statement runs, not across
    round trips; with an Idempotency-Key the vote runs in a transaction (in a savepoint, so a
    lost race on the vote row can run it again)."""
    ada, bob = make_account("ada_l"), make_account("bob_b")
    post_id = client.post("/api/v1/posts", json={"body": "a"}, headers=ada.auth).get_json()["id"]
    url = f"/api/v1/posts/{post_id}/vote"

    with statements_seen(engine) as alone:
        assert client.put(url, json={"value": 1}, headers=bob.auth).status_code == 200
    keyed = {**bob.auth, "Idempotency-Key": "k-1"}
    with statements_seen(engine) as with_key:
        assert client.put(url, json={"value": -1}, headers=keyed).status_code == 200

    assert alone == [("WITH", "IDLE")]
    assert ("WITH", "INTRANS") in with_key and all(s == "INTRANS" for _, s in with_key)
    (post,) = fetch_all(engine, "SELECT up, down FROM posts WHERE id = :id", id=int(post_id))
    assert (post["up"], post["down"]) == (0, 1)


def test_a_vote_on_a_post_that_is_not_published_writes_nothing(client, engine, make_account):
    ada, bob = make_account("ada_l"), make_account("bob_b")
    post_id = client.post("/api/v1/posts", json={"body": "a"}, headers=ada.auth).get_json()["id"]
    assert client.delete(f"/api/v1/posts/{post_id}", headers=ada.auth).status_code == 204
    before = fetch_all(engine, "SELECT last_active_at FROM accounts WHERE id = :id", id=int(bob.id))
    events = len(outbox_events(engine))

    for value in (1, -1, 0):
        r = client.put(f"/api/v1/posts/{post_id}/vote", json={"value": value}, headers=bob.auth)
        assert r.status_code == 404 and r.mimetype == "application/problem+json"
    missing = client.put("/api/v1/posts/1/vote", json={"value": 1}, headers=bob.auth)

    assert missing.status_code == 404
    assert fetch_all(engine, "SELECT * FROM votes") == []
    assert len(outbox_events(engine)) == events
    assert (
        fetch_all(engine, "SELECT last_active_at FROM accounts WHERE id = :id", id=int(bob.id))
        == before
    )


def test_post_ids_are_time_ordered_decimal_strings(client, make_account):
    ada = make_account()
    ids = [
        client.post("/api/v1/posts", json={"body": f"post {i}"}, headers=ada.auth).get_json()["id"]
        for i in range(5)
    ]
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)
    assert len(set(ids)) == 5
    assert all(2**53 < int(i) < 2**63 for i in ids)


def test_the_author_deletes_a_post_and_post_deleted_is_written(client, engine, make_account):
    ada = make_account()
    post_id = client.post("/api/v1/posts", json={"body": "oops"}, headers=ada.auth).get_json()["id"]

    r = client.delete(f"/api/v1/posts/{post_id}", headers=ada.auth)

    assert r.status_code == 204 and r.data == b""
    assert r.headers["X-Consistency-Token"]
    (row,) = fetch_all(engine, "SELECT status, deleted_at FROM posts")
    assert row["status"] == "deleted" and row["deleted_at"] is not None
    assert fetch_all(engine, "SELECT posts_count FROM accounts")[0]["posts_count"] == 0
    event = outbox_events(engine)[-1]
    assert event["type"] == "PostDeleted" and event["payload"]["post_id"] == post_id
    assert event["payload"]["deleted_by"] == ada.id


def test_deleting_a_deleted_post_is_404(client, make_account):
    ada = make_account()
    post_id = client.post("/api/v1/posts", json={"body": "x"}, headers=ada.auth).get_json()["id"]
    client.delete(f"/api/v1/posts/{post_id}", headers=ada.auth)

    assert client.delete(f"/api/v1/posts/{post_id}", headers=ada.auth).status_code == 404


def test_an_admin_deletes_someone_elses_post(client, engine, app, make_account):
    ada, admin = make_account(), make_account("the_admin")
    runner = app.test_cli_runner()
    assert runner.invoke(args=["accounts", "make-admin", "the_admin"]).exit_code == 0
    post_id = client.post("/api/v1/posts", json={"body": "spam"}, headers=ada.auth).get_json()["id"]

    r = client.delete(f"/api/v1/posts/{post_id}", headers=admin.auth)

    assert r.status_code == 204
    assert outbox_events(engine)[-1]["payload"]["deleted_by"] == admin.id


def test_following_writes_the_follow_both_counters_and_account_followed(
    client, engine, make_account
):
    ada, bob = make_account(), make_account()

    r = client.post(f"/api/v1/accounts/{bob.id}/follow", headers=ada.auth)

    assert r.status_code == 200 and r.get_json() == {"following": True}
    assert fetch_all(engine, "SELECT follower_id::text, followee_id::text FROM follows") == [
        {"follower_id": ada.id, "followee_id": bob.id}
    ]
    counts = {
        str(row["id"]): row
        for row in fetch_all(engine, "SELECT id, followers_count, following_count FROM accounts")
    }
    assert counts[ada.id]["following_count"] == 1 and counts[bob.id]["followers_count"] == 1
    event = outbox_events(engine)[-1]
    assert event["type"] == "AccountFollowed"
    assert event["payload"]["follower_id"] == ada.id and event["payload"]["followee_id"] == bob.id
    assert set(event["payload"]) == {"follower_id", "followee_id", "followed_at"}


def test_a_second_follow_changes_nothing(client, engine, make_account):
    ada, bob = make_account(), make_account()
    client.post(f"/api/v1/accounts/{bob.id}/follow", headers=ada.auth)
    events = outbox_events(engine)

    r = client.post(f"/api/v1/accounts/{bob.id}/follow", headers=ada.auth)

    assert r.status_code == 200 and r.get_json() == {"following": True}
    assert outbox_events(engine) == events
    assert len(fetch_all(engine, "SELECT * FROM follows")) == 1


def test_following_yourself_is_422(client, engine, make_account):
    ada = make_account()
    r = client.post(f"/api/v1/accounts/{ada.id}/follow", headers=ada.auth)
    assert r.status_code == 422 and "id" in r.get_json()["errors"]
    assert fetch_all(engine, "SELECT * FROM follows") == []


def test_following_an_unknown_account_is_404(client, make_account):
    ada = make_account()
    assert client.post("/api/v1/accounts/12345/follow", headers=ada.auth).status_code == 404


def test_unfollowing_removes_the_follow_and_writes_account_unfollowed(client, engine, make_account):
    ada, bob = make_account(), make_account()
    client.post(f"/api/v1/accounts/{bob.id}/follow", headers=ada.auth)

    r = client.delete(f"/api/v1/accounts/{bob.id}/follow", headers=ada.auth)

    assert r.status_code == 200 and r.get_json() == {"following": False}
    assert fetch_all(engine, "SELECT * FROM follows") == []
    event = outbox_events(engine)[-1]
    assert event["type"] == "AccountUnfollowed"
    assert (event["payload"]["follower_id"], event["payload"]["followee_id"]) == (ada.id, bob.id)
    counts = {
        str(row["id"]): row
        for row in fetch_all(engine, "SELECT id, followers_count, following_count FROM accounts")
    }
    assert counts[ada.id]["following_count"] == 0 and counts[bob.id]["followers_count"] == 0


def test_unfollowing_someone_not_followed_changes_nothing(client, engine, make_account):
    ada, bob = make_account(), make_account()
    events = outbox_events(engine)
    r = client.delete(f"/api/v1/accounts/{bob.id}/follow", headers=ada.auth)
    assert r.status_code == 200 and r.get_json() == {"following": False}
    assert outbox_events(engine) == events


def test_voting_up_down_and_clearing_moves_the_counts(client, engine, make_account):
    ada, bob = make_account(), make_account()
    post_id = client.post("/api/v1/posts", json={"body": "vote"}, headers=ada.auth).get_json()["id"]
    url = f"/api/v1/posts/{post_id}/vote"

    up = client.put(url, json={"value": 1}, headers=bob.auth).get_json()
    down = client.put(url, json={"value": -1}, headers=bob.auth).get_json()
    cleared = client.put(url, json={"value": 0}, headers=bob.auth).get_json()

    assert up == {"post_id": post_id, "up": 1, "down": 0, "score": 1, "my_vote": 1}
    assert down == {"post_id": post_id, "up": 0, "down": 1, "score": -1, "my_vote": -1}
    assert cleared == {"post_id": post_id, "up": 0, "down": 0, "score": 0, "my_vote": 0}
    assert fetch_all(engine, "SELECT * FROM votes") == []
    events = [e for e in outbox_events(engine) if e["type"] == "VoteCast"]
    assert [e["payload"]["value"] for e in events] == [1, -1, 0]
    (post,) = fetch_all(engine, "SELECT up, down, votes_version FROM posts")
    assert (post["up"], post["down"], post["votes_version"]) == (0, 0, 3)


def test_the_same_vote_twice_counts_once_and_writes_one_event(client, engine, make_account):
    ada = make_account()
    post_id = client.post("/api/v1/posts", json={"body": "vote"}, headers=ada.auth).get_json()["id"]
    url = f"/api/v1/posts/{post_id}/vote"

    client.put(url, json={"value": 1}, headers=ada.auth)
    again = client.put(url, json={"value": 1}, headers=ada.auth)

    assert again.get_json()["up"] == 1
    assert len([e for e in outbox_events(engine) if e["type"] == "VoteCast"]) == 1


def test_voting_on_a_deleted_post_is_404(client, make_account):
    ada = make_account()
    post_id = client.post("/api/v1/posts", json={"body": "x"}, headers=ada.auth).get_json()["id"]
    client.delete(f"/api/v1/posts/{post_id}", headers=ada.auth)
    r = client.put(f"/api/v1/posts/{post_id}/vote", json={"value": 1}, headers=ada.auth)
    assert r.status_code == 404


def test_events_carry_the_requests_correlation_id(client, engine, make_account):
    ada = make_account()
    client.post(
        "/api/v1/posts", json={"body": "traced"}, headers={**ada.auth, "X-Request-ID": "req-42"}
    )
    (row,) = fetch_all(engine, "SELECT correlation_id FROM outbox WHERE type = 'PostPublished'")
    assert row["correlation_id"] == "req-42"
