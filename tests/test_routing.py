"""The one routing table (workers/routing.py): where each event goes, and that each route is
an actor the workers run. The relay and the tests' drain both deliver by it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from feed.events import EVENT_TYPES
from sagas.engine import SAGA_EVENTS
from workers.routing import Route, routes


@pytest.mark.parametrize("event_type", sorted(SAGA_EVENTS))
def test_saga_messages_go_to_the_sagas_alone(event_type):
    assert routes(event_type) == (Route.SAGAS,)


def test_a_deleted_post_reaches_the_read_models_and_the_participants():
    assert routes("PostDeleted") == (Route.PROJECTIONS, Route.PARTICIPANTS)


def test_every_other_feed_event_goes_to_the_projections():
    others = set(EVENT_TYPES) - SAGA_EVENTS - {"PostDeleted"}
    assert others  # the feed's events are known here
    for event_type in others:
        assert routes(event_type) == (Route.PROJECTIONS,), event_type


def test_each_route_names_an_actor_the_workers_run(settings):
    """In a process of its own: importing the actors sets up the broker from BROKER_URL."""
    env = {**os.environ, "BROKER_URL": settings.broker_url}
    declared = subprocess.run(
        [sys.executable, "-c", "from workers import actors\nprint(*actors.broker.actors)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert {route.value for route in Route} <= set(declared), declared
