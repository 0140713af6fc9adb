"""Where each event goes: the one routing table of the relay (to actors over the broker), of
the tests' in-process ``drain`` and of anything else that delivers the outbox.

A route names a destination, not an actor: importing this module builds no broker.
"""

from __future__ import annotations

from enum import StrEnum

from sagas.engine import SAGA_EVENTS
from sagas.runtime import SUBSCRIBED_EVENTS


class Route(StrEnum):
    """A destination of events; each value is the name of the actor that receives it."""

    PROJECTIONS = "project_event"  # the read models (several to a message: project_events)
    SAGAS = "saga_message"  # the saga orchestrator and its participants' steps
    PARTICIPANTS = "participant_event"  # participants reacting to a feed event


def routes(event_type: str) -> tuple[Route, ...]:
    """Saga messages go to the sagas only; other events to the projections, and to the
    participants that subscribe to them."""
    if event_type in SAGA_EVENTS:
        return (Route.SAGAS,)
    if event_type in SUBSCRIBED_EVENTS:
        return (Route.PROJECTIONS, Route.PARTICIPANTS)
    return (Route.PROJECTIONS,)
