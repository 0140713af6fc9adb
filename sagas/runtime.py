"""Where saga messages go: the glue between the outbox envelopes and the engine/participants.
Transport-free, so the actors and the tests' inline relay call the same functions."""

from __future__ import annotations

from feed.bootstrap import Services
from feed.outbox import Envelope

# Importing the definitions and participants registers them.
from sagas import delete_account, engine, promote, publish  # noqa: F401
from sagas.services import (  # noqa: F401
    billing,
    feed,
    media,
    moderation,
    notifications,
    run_step,
)


def handle_saga_event(services: Services, envelope: Envelope) -> bool:
    """Deliver a saga event; False if the event is not the sagas' (or a timer not yet due)."""
    event = envelope.event()
    if isinstance(event, engine.SagaStepRequested):
        run_step(services, event, correlation_id=envelope.correlation_id)
    elif isinstance(event, engine.SagaStepReplied):
        engine.handle_reply(services.engine, event)
    elif isinstance(event, engine.SagaTimerDue):
        return engine.handle_timer(services.engine, event.saga_id)
    else:
        return False
    return True


# Participants that react to the write model's events (beside the read-model projections).
SUBSCRIBED_EVENTS = frozenset({"PostDeleted"})


def react_to_event(services: Services, envelope: Envelope) -> None:
    """Let the participants react to an event; each reaction is safe to run twice."""
    if envelope.type == "PostDeleted":
        media.on_post_deleted(services, int(envelope.payload["post_id"]))
        engine.forget_post_text(services.engine, envelope.payload["post_id"])
