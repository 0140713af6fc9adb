"""Events: frozen, named, versioned, JSON-safe, and readable again after an upcast."""

from __future__ import annotations

import dataclasses
import json

import pytest

from feed import events
from feed.events import EVENT_TYPES, UPCASTERS, PostPublished, UnknownEvent, decode


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
    monkeypatch.setattr(PostPublished, "version", 2)
    monkeypatch.setitem(UPCASTERS, ("PostPublished", 1), lambda p: {**p, "body": p["body"].upper()})
    v1 = sample(PostPublished).to_payload() | {"body": "hello"}
    assert decode("PostPublished", 1, v1).body == "HELLO"


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
