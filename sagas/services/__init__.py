"""The participants: each owns its tables and is reached only by step messages.

``run_step`` is what the participant actor calls: it runs the step's handler in the
participant's transaction, records the step id so a step delivered twice has its effect once,
and puts the reply in the outbox in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from feed.bootstrap import Services
from feed.errors import FeedError
from feed.failpoints import failpoint
from feed.outbox import append_events
from sagas.engine import SagaStepReplied, SagaStepRequested
from sagas.schema import participant_faults, processed_steps


class StepFailed(FeedError):
    """A participant refuses or cannot do a step; ``retryable``: trying again may help."""

    status = 422
    title = "Step failed"
    slug = "step-failed"

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True)
class StepContext:
    """What a handler gets besides its connection: the services and the step's identity."""

    services: Services
    saga_id: str
    step_id: str


Handler = Callable[[Connection, dict[str, Any], StepContext], dict[str, Any]]
HANDLERS: dict[tuple[str, str], Handler] = {}


def handles(service: str, command: str) -> Callable[[Handler], Handler]:
    """Register a participant's handler for one command."""

    def register(handler: Handler) -> Handler:
        HANDLERS[(service, command)] = handler
        return handler

    return register


def run_step(
    services: Services, request: SagaStepRequested, *, correlation_id: str | None = None
) -> None:
    """Run one step once. A duplicate delivery finds the step id recorded and does nothing."""
    handler = HANDLERS[(request.service, request.command)]
    context = StepContext(services, request.saga_id, request.step_id)
    index, kind = request.args.get("_step"), request.args.get("_kind", "action")
    with services.engine.begin() as conn:
        # One attempt of a step at a time: a late attempt waits for the one running, then sees it.
        conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"saga-step:{request.saga_id}:{index}"},
        )
        claimed = conn.execute(
            pg_insert(processed_steps)
            .values(
                step_id=request.step_id,
                service=request.service,
                reply={},
                saga_id=request.saga_id,
                step_index=index,
                kind=kind,
            )
            .on_conflict_do_nothing()
            .returning(processed_steps.c.step_id)
        ).scalar_one_or_none()
        if claimed is None:
            return  # this attempt ran before: its reply is already in the outbox
        earlier = _earlier_outcome(conn, request.saga_id, index, kind)
        try:
            if earlier is not None:
                reply = _replayed(request, earlier)
            else:
                _injected_fault(conn, request.service, request.command)  # its count must stick
                with conn.begin_nested():  # a refused step leaves none of its writes
                    result = handler(conn, request.args, context) or {}
                reply = SagaStepReplied(request.saga_id, request.step_id, ok=True, result=result)
        except StepFailed as failure:
            reply = SagaStepReplied(
                request.saga_id,
                request.step_id,
                ok=False,
                error=failure.reason,
                retryable=failure.retryable,
            )
        conn.execute(
            update(processed_steps)
            .where(processed_steps.c.step_id == request.step_id)
            .values(reply=reply.to_payload())
        )
        append_events(conn, [reply], correlation_id=correlation_id)
        failpoint("saga.step.before_commit")
    failpoint("saga.step.after_commit")


def _earlier_outcome(conn: Connection, saga_id: str, index: Any, kind: str) -> dict | None:
    """What an earlier attempt of the same step already settled, if anything.

    An action whose compensation has run must not happen any more (a late attempt arriving
    after an abort); an action or compensation that succeeded must not happen twice (a retry
    whose first attempt only looked lost). Each answers with the earlier outcome instead.
    """
    if index is None:
        return None
    rows = conn.execute(
        select(processed_steps.c.kind, processed_steps.c.reply).where(
            processed_steps.c.saga_id == saga_id, processed_steps.c.step_index == index
        )
    ).all()
    succeeded = {k: r for k, r in rows if r and r.get("ok")}
    if kind == "action" and "compensation" in succeeded:
        return {"ok": False, "error": "this step was already compensated", "retryable": False}
    return succeeded.get(kind)


def _replayed(request: SagaStepRequested, earlier: dict) -> SagaStepReplied:
    return SagaStepReplied(
        request.saga_id,
        request.step_id,
        ok=bool(earlier.get("ok")),
        result=earlier.get("result") or {},
        error=earlier.get("error"),
        retryable=bool(earlier.get("retryable")),
    )


def _injected_fault(conn: Connection, service: str, command: str) -> None:
    """Operators' fault drills (and tests): fail the next N runs of a command."""
    fault = (
        conn.execute(
            select(participant_faults)
            .where(participant_faults.c.service == service, participant_faults.c.action == command)
            .with_for_update()
        )
        .mappings()
        .first()
    )
    if fault is None or fault["remaining"] <= 0:
        return
    conn.execute(
        update(participant_faults)
        .where(participant_faults.c.service == service, participant_faults.c.action == command)
        .values(remaining=participant_faults.c.remaining - 1)
    )
    raise StepFailed(f"injected {fault['mode']} fault", retryable=fault["mode"] == "transient")


def inject_fault(conn: Connection, service: str, command: str, mode: str, times: int) -> None:
    """Make the next ``times`` runs of ``service.command`` fail (transient or permanent)."""
    conn.execute(
        pg_insert(participant_faults)
        .values(service=service, action=command, mode=mode, remaining=times)
        .on_conflict_do_update(
            index_elements=[participant_faults.c.service, participant_faults.c.action],
            set_={"mode": mode, "remaining": times},
        )
    )
