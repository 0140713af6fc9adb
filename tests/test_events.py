"""Events: frozen, named, versioned, JSON-safe, and readable again after an upcast."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import DateTime, create_engine, literal, select, text

from feed import events
from feed.clock import rfc3339, rfc3339_sql
from feed.config import sqlalchemy_url
from feed.errors import UnknownEvent
from feed.events import (
    EVENT_TYPES,
    UPCASTERS,
    AccountFollowed,
    AccountUnfollowed,
    PostPublished,
    VoteCast,
    account_counts,
    decode,
    post_author,
)
from tests.conftest import fetch_all


@pytest.fixture(scope="module")
def sql_engine(database_url):
    """An engine of its own (hypothesis reruns a test body; a per-test fixture would not be)."""
    engine = create_engine(sqlalchemy_url(database_url))
    yield engine
    engine.dispose()


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


def test_a_posts_event_written_by_postgresql_is_the_event_python_would_write(
    client, engine, make_account
):
    """A text post's ``PostPublished`` is built by its statement in SQL (one round trip); it
    must be the payload ``PostPublished.to_payload`` gives for the same rows."""
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
            author_counts=account_counts(author),
        )
        assert (row["type"], row["version"]) == (PostPublished.name, PostPublished.version)
        assert row["payload"] == expected.to_payload()
        assert decode(row["type"], row["version"], row["payload"]) == expected


def test_a_votes_event_written_by_postgresql_is_the_event_python_would_write(
    client, engine, make_account
):
    """A vote's ``VoteCast`` is built by its statement in SQL; each one must be the payload
    ``VoteCast.to_payload`` gives for the vote it replaced and the post's counts after it."""
    ada, bob = make_account("ada_l"), make_account("bob_b")
    post_id = client.post("/api/v1/posts", json={"body": "x"}, headers=ada.auth).get_json()["id"]
    url, previous = f"/api/v1/posts/{post_id}/vote", 0
    for value in (1, -1, 0, -1):
        answer = client.put(url, json={"value": value}, headers=bob.auth)
        assert answer.status_code == 200, answer.get_json()
        (post,) = fetch_all(engine, "SELECT * FROM posts WHERE id = :id", id=int(post_id))
        row = fetch_all(
            engine, "SELECT * FROM outbox WHERE type = 'VoteCast' ORDER BY position DESC LIMIT 1"
        )[0]
        expected = VoteCast(
            post_id=post_id,
            account_id=bob.id,
            value=value,
            previous=previous,
            up=post["up"],
            down=post["down"],
            votes_version=post["votes_version"],
        )
        assert (row["version"], row["aggregate_id"]) == (VoteCast.version, post_id)
        assert row["payload"] == expected.to_payload()
        assert decode(row["type"], row["version"], row["payload"]) == expected
        previous = value


def test_follow_events_written_by_postgresql_are_the_events_python_would_write(
    client, engine, make_account
):
    """A follow's and an unfollow's events are built by their statements in SQL; each must be
    the payload the event class gives for the follow row's time and both accounts' counters."""
    ada, bob = make_account("ada_l"), make_account("bob_b")
    url = f"/api/v1/accounts/{bob.id}/follow"
    for kind, send in ((AccountFollowed, client.post), (AccountUnfollowed, client.delete)):
        (clock,) = fetch_all(engine, "SELECT now() AS t")
        assert send(url, headers=ada.auth).status_code == 200
        (row,) = fetch_all(engine, "SELECT * FROM outbox WHERE type = :t", t=kind.name)
        if kind is AccountFollowed:
            (follow,) = fetch_all(engine, "SELECT created_at FROM follows")
            at = {"followed_at": rfc3339(follow["created_at"])}
        else:  # the removal's time: its statement's, between the clock readings around it
            assert fetch_all(engine, "SELECT * FROM follows") == []
            (after,) = fetch_all(engine, "SELECT now() AS t")
            at = {"unfollowed_at": row["payload"]["unfollowed_at"]}
            assert rfc3339(clock["t"]) <= at["unfollowed_at"] <= rfc3339(after["t"])
        counts = {a["id"]: account_counts(a) for a in fetch_all(engine, "SELECT * FROM accounts")}
        expected = kind(
            follower_id=ada.id,
            followee_id=bob.id,
            follower_counts=counts[int(ada.id)],
            followee_counts=counts[int(bob.id)],
            **at,
        )
        assert (row["version"], row["aggregate_id"]) == (kind.version, ada.id)
        assert row["payload"] == expected.to_payload()
        assert decode(row["type"], row["version"], row["payload"]) == expected


@settings(max_examples=200, deadline=None)
@given(
    moment=st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(2200, 12, 31),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11))]
        ),
    )
)
def test_postgresql_writes_a_time_as_rfc3339_does(sql_engine, moment):
    """``rfc3339_sql`` (the SQL-built events' times) against ``rfc3339``: the same string,
    milliseconds truncated, in UTC, whatever the offset."""
    with sql_engine.connect() as conn:
        conn.execute(text("SET TIME ZONE 'America/St_Johns'"))  # the session's zone is no help
        written = conn.execute(
            select(rfc3339_sql(literal(moment, DateTime(timezone=True))))
        ).scalar_one()
    assert written == rfc3339(moment)
