"""Events: frozen, named, versioned, JSON-safe, and readable again after an upcast."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest

from feed import events
from feed.clock import rfc3339
from feed.errors import UnknownEvent
from feed.events import (
    EVENT_TYPES,
    UPCASTERS,
    AccountFollowed,
    AccountUnfollowed,
    PostPublished,
    VoteCast,
    decode,
    post_author,
)
from tests.conftest import fetch_all


def sample(cls):
    """An instance with a plausible value in every field (field types are strings here)."""
    by_type = {"str": "1", "int": 1, "bool": True}

    def value(type_name: str):
        type_name = type_name.removesuffix(" | None")
        if type_name.startswith("tuple"):
            return ({"id": "1", "content_type": "image/png"},)
        if type_name.startswith("dict"):
            return {"followers_count": 1, "counts_version": 2}
        return by_type[type_name]

    return cls(**{field.name: value(field.type) for field in dataclasses.fields(cls)})


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_every_event_round_trips_through_json(name):
    cls = EVENT_TYPES[name]
    event = sample(cls)
    payload = json.loads(json.dumps(event.to_payload()))
    assert decode(cls.name, cls.version, payload) == event
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.__setattr__(dataclasses.fields(cls)[0].name, "2")


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_a_payload_is_what_dataclasses_asdict_gives_and_shares_no_container(name):
    event = sample(EVENT_TYPES[name])
    payload = event.to_payload()
    assert json.dumps(payload, sort_keys=True) == json.dumps(
        dataclasses.asdict(event), sort_keys=True
    )
    for field in dataclasses.fields(event):
        value = getattr(event, field.name)
        if isinstance(value, dict | list | tuple):  # a copy: changing it leaves the event alone
            assert payload[field.name] is not value


def test_an_old_payload_is_upcast_before_decoding(monkeypatch):
    monkeypatch.setattr(PostPublished, "version", 3)
    monkeypatch.setitem(UPCASTERS, ("PostPublished", 2), lambda p: {**p, "body": p["body"].upper()})
    v2 = sample(PostPublished).to_payload() | {"body": "hello"}
    assert decode("PostPublished", 2, v2).body == "HELLO"


def test_unknown_types_and_versions_are_refused():
    with pytest.raises(UnknownEvent):
        decode("Nope", 1, {})
    with pytest.raises(UnknownEvent):
        events.decode("PostPublished", 99, {})


def test_an_envelope_travels_as_its_fields_and_comes_back_equal():
    from feed.outbox import Envelope

    envelope = Envelope(
        position=7,
        event_id="0b6f0c1e-0000-4000-8000-000000000007",
        type=PostPublished.name,
        version=PostPublished.version,
        payload=sample(PostPublished).to_payload(),
        correlation_id="req-1",
        created_at="2026-11-27T08:00:00.000000Z",
    )
    message = envelope.to_message()
    assert message == dataclasses.asdict(envelope)
    assert Envelope(**json.loads(json.dumps(message))) == envelope


def test_a_posts_event_names_the_rows_its_statement_wrote(client, engine, make_account):
    """A text post's ``PostPublished`` is built in Python before its statement (the post's id
    and time are read first); it must name the rows as they were committed."""
    ada = make_account("ada_l")
    for body in ("first", 'quotes " and \\ and \u00e9 and \U0001f600 and\nlines'):
        answer = client.post("/api/v1/posts", json={"body": body}, headers=ada.auth)
        assert answer.status_code == 201, answer.get_json()
        post_id = int(answer.get_json()["id"])
        (post,) = fetch_all(engine, "SELECT * FROM posts WHERE id = :id", id=post_id)
        (author,) = fetch_all(engine, "SELECT * FROM accounts WHERE id = :id", id=ada.id)
        (row,) = fetch_all(engine, "SELECT * FROM outbox WHERE aggregate_id = :id", id=str(post_id))
        expected = PostPublished(
            post_id=str(post_id),
            author_id=str(author["id"]),
            body=body,
            created_at=rfc3339(post["created_at"]),
            author=post_author(author),
            media=(),
        )
        assert (row["type"], row["version"]) == (PostPublished.name, PostPublished.version)
        assert row["payload"] == expected.to_payload()
        assert decode(row["type"], row["version"], row["payload"]) == expected


def test_a_vote_appends_the_event_it_was_given_only_when_it_changed_something(
    client, engine, make_account
):
    """A vote's statement appends the ``VoteCast`` built before it (a parameter), once for each
    change and never for a repeat."""
    ada, bob = make_account("ada_l"), make_account("bob_b")
    post_id = client.post("/api/v1/posts", json={"body": "x"}, headers=ada.auth).get_json()["id"]
    url = f"/api/v1/posts/{post_id}/vote"
    for value in (1, 1, -1, 0, 0, -1):
        answer = client.put(url, json={"value": value}, headers=bob.auth)
        assert answer.status_code == 200, answer.get_json()
    rows = fetch_all(engine, "SELECT * FROM outbox WHERE type = 'VoteCast' ORDER BY position")
    expected = [VoteCast(post_id=post_id, account_id=bob.id, value=v) for v in (1, -1, 0, -1)]
    assert [row["payload"] for row in rows] == [event.to_payload() for event in expected]
    assert {(row["version"], row["aggregate_id"]) for row in rows} == {(VoteCast.version, post_id)}


def test_follow_events_carry_the_follows_time(client, engine, make_account):
    """A follow's event and its row have the same time; an unfollow's is the command's."""
    ada, bob = make_account("ada_l"), make_account("bob_b")
    url = f"/api/v1/accounts/{bob.id}/follow"
    for kind, send in ((AccountFollowed, client.post), (AccountUnfollowed, client.delete)):
        before = rfc3339(datetime.now(UTC))
        assert send(url, headers=ada.auth).status_code == 200
        (row,) = fetch_all(engine, "SELECT * FROM outbox WHERE type = :t", t=kind.name)
        if kind is AccountFollowed:
            (follow,) = fetch_all(engine, "SELECT created_at FROM follows")
            at = {"followed_at": rfc3339(follow["created_at"])}
        else:
            assert fetch_all(engine, "SELECT * FROM follows") == []
            at = {"unfollowed_at": row["payload"]["unfollowed_at"]}
            assert before <= at["unfollowed_at"] <= rfc3339(datetime.now(UTC))
        expected = kind(follower_id=ada.id, followee_id=bob.id, **at)
        assert (row["version"], row["aggregate_id"]) == (kind.version, ada.id)
        assert row["payload"] == expected.to_payload()
        assert decode(row["type"], row["version"], row["payload"]) == expected


def test_events_written_with_counters_read_without_them():
    """Rows written before the counters left these events decode without them."""
    counts = {"followers_count": 1, "following_count": 2, "posts_count": 3, "counts_version": 4}
    author = {"id": "1", "handle": "ada", "display_name": "Ada"}
    post_v2 = {
        "post_id": "9",
        "author_id": "1",
        "body": "x",
        "created_at": "2026-12-01T00:00:00.000Z",
        "author": author,
        "media": [],
        "author_counts": counts,
    }
    assert decode("PostPublished", 2, post_v2) == PostPublished(
        post_id="9",
        author_id="1",
        body="x",
        created_at="2026-12-01T00:00:00.000Z",
        author=author,
        media=(),
    )
    follow_v1 = {
        "follower_id": "1",
        "followee_id": "2",
        "followed_at": "2026-12-01T00:00:00.000Z",
        "follower_counts": counts,
        "followee_counts": counts,
    }
    assert decode("AccountFollowed", 1, follow_v1) == AccountFollowed(
        follower_id="1", followee_id="2", followed_at="2026-12-01T00:00:00.000Z"
    )
    unfollow_v1 = {**follow_v1, "unfollowed_at": follow_v1.pop("followed_at")}
    assert decode("AccountUnfollowed", 1, unfollow_v1) == AccountUnfollowed(
        follower_id="1", followee_id="2", unfollowed_at="2026-12-01T00:00:00.000Z"
    )
    vote_v1 = {
        "post_id": "9",
        "account_id": "1",
        "value": -1,
        "previous": 1,
        "up": 0,
        "down": 1,
        "votes_version": 2,
    }
    assert decode("VoteCast", 1, vote_v1) == VoteCast(post_id="9", account_id="1", value=-1)
