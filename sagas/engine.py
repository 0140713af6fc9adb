"""The saga engine: definitions, persistence, sending steps, replies, retries, timeouts,
compensation, recovery. Definitions only say *what*; this module does everything else.

A saga instance is a row in ``sagas``; every attempt of every step is a row in ``saga_steps``.
Step commands and participants' replies travel through the outbox (so a command is sent if and
only if the transaction that decided to send it commits) and RabbitMQ. The saga row is updated
with optimistic locking (``lock_version``): a transition that lost a race is retried from the
fresh state. Nothing lives in memory between messages, so a killed orchestrator resumes from
PostgreSQL.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import (
    ARRAY,
    Connection,
    Engine,
    Text,
    func,
    insert,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB

from feed.clock import utcnow
from feed.errors import Conflict, FeedError, NotFound
from feed.events import Event, register_event
from feed.failpoints import failpoint
from feed.outbox import append_events
from sagas.metrics import SAGA_COMPENSATIONS, SAGA_RETRIES, SAGA_STEP_SECONDS
from sagas.schema import saga_operator_actions, saga_steps, sagas

# --- definitions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how fast a step is tried again: exponential backoff with jitter."""

    attempts: int = 3
    base_seconds: float = 0.2
    max_seconds: float = 30.0
    jitter: float = 0.5

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        backoff = min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1))
        return backoff * (1 - self.jitter * random.random())


@dataclass(frozen=True)
class Step:
    """One step: an action at a participant and the compensation that undoes it."""

    name: str
    service: str
    action: str
    compensation: str | None = None
    retry: RetryPolicy = RetryPolicy()
    compensation_retry: RetryPolicy = RetryPolicy(attempts=8)
    timeout_seconds: float = 10.0
    # Once this step has completed, a later failure no longer compensates: the saga retries
    # forward until it completes, or waits for an operator as ``failed``.
    point_of_no_return: bool = False


@dataclass(frozen=True)
class SagaDefinition:
    """A saga type at one version: its steps, top to bottom."""

    type: str
    version: int
    steps: tuple[Step, ...]
    # No progress for this long marks a saga ``stuck`` (the sweeper then resumes it).
    stuck_after_seconds: float = 120.0
    # The read-model keys, (kind, id), a saga of this type can have changed, from its data
    # and PostgreSQL: what a repair rebuilds (sagas/repair.py).
    touched: Callable[[Connection, dict[str, Any]], list[tuple[str, int]]] = lambda conn, data: []

    def step(self, index: int) -> Step:
        return self.steps[index]

    @property
    def pivot(self) -> int | None:
        """Index of the point of no return, if the saga has one."""
        for index, step in enumerate(self.steps):
            if step.point_of_no_return:
                return index
        return None


DEFINITIONS: dict[tuple[str, int], SagaDefinition] = {}
LATEST: dict[str, SagaDefinition] = {}


def define(definition: SagaDefinition) -> SagaDefinition:
    """Register a definition; a saga finishes on the version it started with."""
    DEFINITIONS[(definition.type, definition.version)] = definition
    if definition.type not in LATEST or LATEST[definition.type].version < definition.version:
        LATEST[definition.type] = definition
    return definition


# --- messages (through the outbox) ---------------------------------------------------------


@dataclass(frozen=True)
class SagaStepRequested(Event):
    """The orchestrator asks ``service`` to run ``command`` (an action or a compensation)."""

    name: ClassVar[str] = "SagaStepRequested"
    projected: ClassVar[bool] = False
    version: ClassVar[int] = 1

    saga_id: str
    step_id: str
    service: str
    command: str
    args: dict[str, Any]

    @property
    def aggregate_id(self) -> str:
        return self.saga_id


@dataclass(frozen=True)
class SagaStepReplied(Event):
    """A participant answers a step: ``ok`` with a result, or an error (retryable or not)."""

    name: ClassVar[str] = "SagaStepReplied"
    projected: ClassVar[bool] = False
    version: ClassVar[int] = 1

    saga_id: str
    step_id: str
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    retryable: bool = False

    @property
    def aggregate_id(self) -> str:
        return self.saga_id


@dataclass(frozen=True)
class SagaTimerDue(Event):
    """Wake the saga at ``at`` (a retry after backoff)."""

    name: ClassVar[str] = "SagaTimerDue"
    projected: ClassVar[bool] = False
    version: ClassVar[int] = 1

    saga_id: str
    at: str

    @property
    def aggregate_id(self) -> str:
        return self.saga_id


for _event in (SagaStepRequested, SagaStepReplied, SagaTimerDue):
    register_event(_event)

SAGA_EVENTS = frozenset({"SagaStepRequested", "SagaStepReplied", "SagaTimerDue"})


# --- errors --------------------------------------------------------------------------------


class SagaError(FeedError):
    """Base of the engine's errors (members of the service's one error family)."""


class SagaNotFound(SagaError, NotFound):
    """No saga with that id."""


class ConcurrentUpdate(SagaError, Conflict):
    """The saga row changed under us (optimistic lock); redo from fresh state."""


class InvalidTransition(SagaError, Conflict):
    """The operator asked for something the saga's status does not allow."""


# --- the state machine ---------------------------------------------------------------------


@dataclass
class Instance:
    """A saga row, loaded with the version used for the optimistic lock."""

    row: dict[str, Any]

    @property
    def id(self) -> uuid.UUID:
        return self.row["id"]

    @property
    def definition(self) -> SagaDefinition:
        return DEFINITIONS[(self.row["type"], self.row["version"])]


def start(
    conn: Connection,
    definition: SagaDefinition,
    data: dict[str, Any],
    *,
    account_id: int | None = None,
    correlation_id: str | None = None,
) -> uuid.UUID:
    """Create a saga in the caller's transaction and send its first step with it."""
    saga_id = uuid.uuid4()
    row = (
        conn.execute(
            insert(sagas)
            .values(
                id=saga_id,
                type=definition.type,
                version=definition.version,
                account_id=account_id,
                status="running",
                data=data,
                deadline=utcnow() + timedelta(seconds=definition.stuck_after_seconds),
            )
            .returning(*sagas.c)
        )
        .mappings()
        .one()
    )
    instance = Instance(dict(row))
    _send(conn, instance, 0, "action", attempt=1, correlation_id=correlation_id)
    return saga_id


def load(conn: Connection, saga_id: uuid.UUID | str) -> Instance:
    row = conn.execute(select(sagas).where(sagas.c.id == _uuid(saga_id))).mappings().first()
    if row is None:
        raise SagaNotFound(str(saga_id))
    return Instance(dict(row))


def handle_reply(engine: Engine, reply: SagaStepReplied) -> None:
    """Record a participant's reply and move the saga on. A duplicate reply changes nothing."""

    def work(conn: Connection) -> None:
        _apply_reply(conn, reply)
        failpoint("saga.reply.before_commit")

    _with_retries(engine, work)
    failpoint("saga.reply.after_commit")


def handle_timer(engine: Engine, saga_id: str) -> bool:
    """Send the retry a saga was waiting for, if it is due; False if it is not due yet."""
    return _with_retries(engine, lambda conn: _apply_timer(conn, saga_id))


def _apply_reply(conn: Connection, reply: SagaStepReplied) -> None:
    attempt = (
        conn.execute(
            select(saga_steps).where(saga_steps.c.step_id == _uuid(reply.step_id)).with_for_update()
        )
        .mappings()
        .first()
    )
    if attempt is None or attempt["status"] != "sent":
        return  # a duplicate, or the reply to an attempt that already timed out
    conn.execute(
        update(saga_steps)
        .where(saga_steps.c.step_id == attempt["step_id"])
        .values(
            status="succeeded" if reply.ok else "failed",
            reply={"ok": reply.ok, "result": reply.result, "retryable": reply.retryable},
            error=reply.error,
            replied_at=func.now(),
        )
    )
    instance = load(conn, attempt["saga_id"])
    SAGA_STEP_SECONDS.labels(
        instance.row["type"], attempt["name"], attempt["kind"], "ok" if reply.ok else "failed"
    ).observe(max(0.0, (utcnow() - attempt["sent_at"]).total_seconds()))
    if not _is_current(instance, attempt):
        return
    if reply.ok:
        _step_succeeded(conn, instance, attempt, reply.result)
    else:
        _step_failed(conn, instance, attempt, reply.error or "failed", reply.retryable)


def _apply_timer(conn: Connection, saga_id: str) -> bool:
    instance = load(conn, saga_id)
    retry_at = instance.row["retry_at"]
    if retry_at is None or instance.row["status"] not in ("running", "compensating"):
        return True
    if retry_at > utcnow():
        return False
    last = _last_attempt(conn, instance)
    kind = "compensation" if instance.row["direction"] == "backward" else "action"
    attempt = (last["attempt"] + 1) if last and last["kind"] == kind else 1
    _transition(conn, instance, retry_at=None)
    _send(conn, load(conn, saga_id), instance.row["current_step"], kind, attempt=attempt)
    return True


def _step_succeeded(
    conn: Connection, instance: Instance, attempt: dict[str, Any], result: dict[str, Any]
) -> None:
    definition = instance.definition
    index = attempt["step_index"]
    data = {**instance.row["data"], **(result or {})}
    if attempt["kind"] == "action":
        completed = [*instance.row["completed_steps"], index]
        if index + 1 < len(definition.steps):
            _transition(
                conn,
                instance,
                data=data,
                completed_steps=completed,
                current_step=index + 1,
                last_error=None,
            )
            _send(conn, load(conn, instance.id), index + 1, "action", attempt=1)
        else:
            _transition(
                conn,
                instance,
                data=data,
                completed_steps=completed,
                status="completed",
                last_error=None,
            )
        return
    completed = [i for i in instance.row["completed_steps"] if i != index]
    _transition(conn, instance, data=data, completed_steps=completed)
    _compensate_next(conn, load(conn, instance.id))


def _step_failed(
    conn: Connection,
    instance: Instance,
    attempt: dict[str, Any],
    error: str,
    retryable: bool,
    *,
    maybe_done: bool = False,
) -> None:
    """A step attempt failed: retry it, compensate, or wait for an operator.

    ``maybe_done``: the attempt timed out, so it may still run (or have run); if the saga now
    compensates, that step is compensated too (the participant refuses the action afterwards).
    """
    definition = instance.definition
    step = definition.step(attempt["step_index"])
    policy = step.retry if attempt["kind"] == "action" else step.compensation_retry
    if retryable and attempt["attempt"] < policy.attempts:
        _schedule_retry(conn, instance, policy.delay(attempt["attempt"]), error)
        SAGA_RETRIES.labels(instance.row["type"], step.name).inc()
        return
    if attempt["kind"] == "compensation":
        _transition(
            conn, instance, status="failed", last_error=f"compensation {step.name} failed: {error}"
        )
        return
    if _past_point_of_no_return(instance):
        _transition(
            conn,
            instance,
            status="failed",
            last_error=f"{step.name} failed after the point of no return: {error}",
        )
        return
    if maybe_done and step.point_of_no_return:
        # The pivot may still commit, and nothing undoes it: compensating the steps before it
        # would leave it done on top of their undoing. Forward only, by an operator's retry.
        _transition(
            conn,
            instance,
            status="failed",
            last_error=f"{step.name} timed out at the point of no return (it may have run): "
            f"{error}; retry it",
        )
        return
    completed = list(instance.row["completed_steps"])
    if maybe_done and attempt["step_index"] not in completed:
        completed.append(attempt["step_index"])
    _transition(
        conn,
        instance,
        status="compensating",
        direction="backward",
        completed_steps=completed,
        last_error=f"{step.name} failed: {error}",
    )
    SAGA_COMPENSATIONS.labels(instance.row["type"]).inc()
    _compensate_next(conn, load(conn, instance.id))


def _compensate_next(conn: Connection, instance: Instance) -> None:
    """Compensate the latest completed step that has a compensation, or finish compensated."""
    definition = instance.definition
    for index in sorted(instance.row["completed_steps"], reverse=True):
        if definition.step(index).compensation:
            _transition(
                conn, instance, current_step=index, status="compensating", direction="backward"
            )
            _send(conn, load(conn, instance.id), index, "compensation", attempt=1)
            return
    _transition(conn, instance, status="compensated", completed_steps=[])


def _schedule_retry(conn: Connection, instance: Instance, delay: float, error: str) -> None:
    at = utcnow() + timedelta(seconds=delay)
    _transition(conn, instance, retry_at=at, last_error=error)
    append_events(conn, [SagaTimerDue(saga_id=str(instance.id), at=at.isoformat())])


def _past_point_of_no_return(instance: Instance) -> bool:
    pivot = instance.definition.pivot
    return pivot is not None and pivot in instance.row["completed_steps"]


def _send(
    conn: Connection,
    instance: Instance,
    index: int,
    kind: str,
    *,
    attempt: int,
    correlation_id: str | None = None,
) -> None:
    """Record a step attempt and put its command in the outbox, in one transaction."""
    step = instance.definition.step(index)
    command = step.action if kind == "action" else step.compensation
    assert command is not None
    step_id = uuid.uuid4()
    args = {
        **instance.row["data"],
        "saga_id": str(instance.id),
        "_step": index,
        "_kind": kind,
        "reason": instance.row.get("last_error"),
    }
    conn.execute(
        insert(saga_steps).values(
            step_id=step_id,
            saga_id=instance.id,
            step_index=index,
            name=step.name,
            kind=kind,
            attempt=attempt,
            status="sent",
            command={"service": step.service, "command": command, "args": args},
            timeout_at=utcnow() + timedelta(seconds=step.timeout_seconds),
        )
    )
    append_events(
        conn,
        [SagaStepRequested(str(instance.id), str(step_id), step.service, command, args)],
        correlation_id=correlation_id,
    )


def _transition(conn: Connection, instance: Instance, **changes: Any) -> None:
    """Update the saga row if nobody else did since we read it (optimistic lock)."""
    version = instance.row["lock_version"]
    definition = instance.definition
    changes.setdefault("updated_at", func.now())
    changes["deadline"] = utcnow() + timedelta(seconds=definition.stuck_after_seconds)
    result = conn.execute(
        update(sagas)
        .where(sagas.c.id == instance.id, sagas.c.lock_version == version)
        .values(lock_version=version + 1, **changes)
    )
    if result.rowcount != 1:
        raise ConcurrentUpdate(str(instance.id))
    instance.row.update({k: v for k, v in changes.items() if k != "updated_at"})
    instance.row["lock_version"] = version + 1


def _is_current(instance: Instance, attempt: dict[str, Any]) -> bool:
    row = instance.row
    expected_kind = "compensation" if row["direction"] == "backward" else "action"
    return (
        row["status"] in ("running", "compensating", "stuck")
        and attempt["step_index"] == row["current_step"]
        and attempt["kind"] == expected_kind
        and row["retry_at"] is None
    )


def _last_attempt(conn: Connection, instance: Instance) -> dict[str, Any] | None:
    row = (
        conn.execute(
            select(saga_steps)
            .where(
                saga_steps.c.saga_id == instance.id,
                saga_steps.c.step_index == instance.row["current_step"],
            )
            .order_by(saga_steps.c.sent_at.desc(), saga_steps.c.attempt.desc())
            .limit(1)
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def _with_retries(engine: Engine, work, attempts: int = 5):
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                return work(conn)
        except ConcurrentUpdate:
            if attempt == attempts - 1:
                raise
    return None


def _uuid(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


# --- recovery: timeouts and stuck sagas ----------------------------------------------------


STUCK_VISIBLE_SECONDS = 60.0


def sweep(
    engine: Engine, *, stuck_visible_seconds: float = STUCK_VISIBLE_SECONDS
) -> dict[str, int]:
    """Time out unanswered attempts, fire overdue timers, mark sagas with no progress past
    their deadline ``stuck``, and resume those stuck for ``stuck_visible_seconds`` (operators
    see them as ``stuck`` meanwhile, and may retry or abort them first). Safe to run
    anywhere, any number of times."""
    counts = {"timed_out": 0, "timers": 0, "stuck": 0, "resumed": 0}
    with engine.connect() as conn:
        overdue = (
            conn.execute(
                select(saga_steps.c.step_id).where(
                    saga_steps.c.status == "sent", saga_steps.c.timeout_at < func.now()
                )
            )
            .scalars()
            .all()
        )
        timers = (
            conn.execute(
                select(sagas.c.id).where(
                    sagas.c.retry_at < func.now(), sagas.c.status.in_(("running", "compensating"))
                )
            )
            .scalars()
            .all()
        )
        late = (
            conn.execute(
                select(sagas.c.id).where(
                    sagas.c.deadline < func.now(), sagas.c.status.in_(("running", "compensating"))
                )
            )
            .scalars()
            .all()
        )
        resumable = (
            conn.execute(
                select(sagas.c.id).where(sagas.c.status == "stuck", sagas.c.retry_at < func.now())
            )
            .scalars()
            .all()
        )
    for step_id in overdue:
        if _with_retries(engine, lambda conn, s=step_id: _time_out(conn, s)):
            counts["timed_out"] += 1
    for saga_id in timers:
        if _with_retries(engine, lambda conn, s=saga_id: _apply_timer(conn, str(s))):
            counts["timers"] += 1
    for saga_id in late:
        mark = lambda conn, s=saga_id: _mark_stuck(conn, s, stuck_visible_seconds)  # noqa: E731
        if _with_retries(engine, mark):
            counts["stuck"] += 1
    for saga_id in resumable:
        if _with_retries(engine, lambda conn, s=saga_id: _resume_stuck(conn, s)):
            counts["resumed"] += 1
    return counts


def _time_out(conn: Connection, step_id: uuid.UUID) -> bool:
    attempt = (
        conn.execute(select(saga_steps).where(saga_steps.c.step_id == step_id).with_for_update())
        .mappings()
        .first()
    )
    if attempt is None or attempt["status"] != "sent" or attempt["timeout_at"] >= utcnow():
        return False
    conn.execute(
        update(saga_steps)
        .where(saga_steps.c.step_id == step_id)
        .values(
            status="timed_out", error="no reply before the step's timeout", replied_at=func.now()
        )
    )
    instance = load(conn, attempt["saga_id"])
    if _is_current(instance, attempt):
        _step_failed(conn, instance, dict(attempt), "timed out", retryable=True, maybe_done=True)
    return True


def _mark_stuck(conn: Connection, saga_id: uuid.UUID, visible_seconds: float) -> bool:
    """A saga without progress past its deadline, and nothing it waits for, becomes ``stuck``
    (its own transaction: operators see it) until the sweeper resumes it after
    ``visible_seconds``."""
    instance = load(conn, saga_id)
    if instance.row["status"] not in ("running", "compensating"):
        return False
    if instance.row["deadline"] >= utcnow():
        return False
    if instance.row["retry_at"] is not None:
        return False  # waiting for a timer on purpose
    waiting = conn.execute(
        select(func.count())
        .select_from(saga_steps)
        .where(
            saga_steps.c.saga_id == saga_id,
            saga_steps.c.status == "sent",
            saga_steps.c.timeout_at >= func.now(),
        )
    ).scalar_one()
    if waiting:
        return False
    status = instance.row["status"]
    _transition(
        conn, instance, status="stuck", retry_at=utcnow() + timedelta(seconds=visible_seconds)
    )
    _record_action(conn, instance.id, "sweeper", "stuck", {"was": status})
    return True


def _resume_stuck(conn: Connection, saga_id: uuid.UUID) -> bool:
    """Resume a saga left ``stuck`` past its visible window (no operator acted first)."""
    instance = load(conn, saga_id)
    if instance.row["status"] != "stuck" or instance.row["retry_at"] >= utcnow():
        return False
    _record_action(conn, instance.id, "sweeper", "resume", {})
    after = "compensating" if instance.row["direction"] == "backward" else "running"
    _resume(conn, instance, status_after=after)
    return True


def _resume(
    conn: Connection, instance: Instance, *, status_after: str, fresh_attempts: bool = False
) -> None:
    """Send the current step again as a new attempt (superseding any attempt still open).

    ``fresh_attempts``: an operator's retry gives the step its whole retry policy again.
    """
    conn.execute(
        update(saga_steps)
        .where(saga_steps.c.saga_id == instance.id, saga_steps.c.status == "sent")
        .values(status="superseded", replied_at=func.now())
    )
    kind = "compensation" if instance.row["direction"] == "backward" else "action"
    last = _last_attempt(conn, instance)
    attempt = (last["attempt"] + 1) if last and last["kind"] == kind and not fresh_attempts else 1
    _transition(conn, instance, status=status_after, retry_at=None)
    _send(conn, load(conn, instance.id), instance.row["current_step"], kind, attempt=attempt)


# --- operator actions ----------------------------------------------------------------------


def retry(engine: Engine, saga_id: str, operator: str) -> Instance:
    """Resume a ``failed`` or ``stuck`` saga from the step that failed (``retry_in``), in a
    transaction of its own."""
    return _with_retries(engine, lambda conn: retry_in(conn, saga_id, operator))


def retry_in(conn: Connection, saga_id: str, operator: str) -> Instance:
    """Resume a ``failed`` or ``stuck`` saga from the step that failed, in the caller's
    transaction (``ConcurrentUpdate`` when another changed the saga meanwhile). Asking twice
    does it once: the second request finds the saga running and changes nothing."""
    instance = load(conn, saga_id)
    status = instance.row["status"]
    if status in ("running", "compensating"):
        return instance
    if status not in ("failed", "stuck"):
        raise InvalidTransition(f"a {status} saga cannot be retried")
    _record_action(conn, instance.id, operator, "retry", {"from_status": status})
    after = "compensating" if instance.row["direction"] == "backward" else "running"
    _resume(conn, instance, status_after=after, fresh_attempts=True)
    return load(conn, saga_id)


def abort(engine: Engine, saga_id: str, operator: str) -> Instance:
    """Compensate what was done and end the saga ``compensated`` (``abort_in``), in a
    transaction of its own."""
    return _with_retries(engine, lambda conn: abort_in(conn, saga_id, operator))


def abort_in(conn: Connection, saga_id: str, operator: str) -> Instance:
    """Compensate what was done and end the saga ``compensated``, in the caller's transaction."""
    instance = load(conn, saga_id)
    status = instance.row["status"]
    if status == "compensating" or status in ("completed", "compensated"):
        if status == "completed":
            raise InvalidTransition("a completed saga cannot be aborted")
        return instance
    if _past_point_of_no_return(instance):
        raise InvalidTransition("this saga is past its point of no return; retry it instead")
    in_flight = instance.row["direction"] == "forward" and _in_flight(conn, instance)
    if in_flight and instance.row["current_step"] == instance.definition.pivot:
        raise InvalidTransition(
            "its point-of-no-return step may still run, and cannot be undone; retry it instead"
        )
    _record_action(conn, instance.id, operator, "abort", {"from_status": status})
    completed = list(instance.row["completed_steps"])
    if in_flight:
        completed.append(instance.row["current_step"])  # it may run yet: undo it too
    conn.execute(
        update(saga_steps)
        .where(saga_steps.c.saga_id == instance.id, saga_steps.c.status == "sent")
        .values(status="superseded", replied_at=func.now())
    )
    _transition(
        conn,
        instance,
        status="compensating",
        direction="backward",
        completed_steps=completed,
        retry_at=None,
        last_error=f"aborted by {operator}",
    )
    _compensate_next(conn, load(conn, saga_id))
    return load(conn, saga_id)


def _in_flight(conn: Connection, instance: Instance) -> bool:
    """True when the current step has an attempt that may still run (sent, or timed out)."""
    return bool(
        conn.execute(
            select(func.count())
            .select_from(saga_steps)
            .where(
                saga_steps.c.saga_id == instance.id,
                saga_steps.c.step_index == instance.row["current_step"],
                saga_steps.c.kind == "action",
                saga_steps.c.status.in_(("sent", "timed_out")),
            )
        ).scalar_one()
    )


def can_abort(conn: Connection, instance: Instance) -> bool:
    """Whether an operator may abort this saga now."""
    if instance.row["status"] not in ("running", "failed", "stuck"):
        return False
    if _past_point_of_no_return(instance):
        return False
    at_pivot = instance.row["current_step"] == instance.definition.pivot
    return not (at_pivot and instance.row["direction"] == "forward" and _in_flight(conn, instance))


def forget_post_text(engine: Engine, post_id: str) -> int:
    """A deleted post's text leaves the data of the saga that published it (moderation read it
    there) and the args recorded with each of its steps. Safe to repeat; returns how many
    sagas changed."""
    blank = literal({"body": ""}, JSONB)
    with engine.begin() as conn:
        changed = (
            conn.execute(
                update(sagas)
                .where(sagas.c.data["post_id"].astext == str(post_id), sagas.c.data.has_key("body"))
                .values(data=sagas.c.data.op("||")(blank))
                .returning(sagas.c.id)
            )
            .scalars()
            .all()
        )
        if changed:
            args = saga_steps.c.command["args"]
            conn.execute(
                update(saga_steps)
                .where(saga_steps.c.saga_id.in_(changed), args.has_key("body"))
                .values(
                    command=func.jsonb_set(
                        saga_steps.c.command, literal(["args"], ARRAY(Text)), args.op("||")(blank)
                    )
                )
            )
        return len(changed)


def record_action(engine: Engine, saga_id: str, operator: str, action: str, detail: dict) -> None:
    """Record an operator's action in the saga's history (who, when, what)."""
    with engine.begin() as conn:
        record_action_in(conn, saga_id, operator, action, detail)


def record_action_in(
    conn: Connection, saga_id: str, operator: str, action: str, detail: dict
) -> None:
    """Record an operator's action in the saga's history, in the caller's transaction."""
    _record_action(conn, load(conn, saga_id).id, operator, action, detail)


def _record_action(
    conn: Connection, saga_id: uuid.UUID, operator: str, action: str, detail: dict[str, Any]
) -> None:
    conn.execute(
        insert(saga_operator_actions).values(
            saga_id=saga_id, operator=operator, action=action, detail=detail
        )
    )


# --- reading -------------------------------------------------------------------------------


def history(conn: Connection, saga_id: str) -> dict[str, Any]:
    """The saga with every step attempt and every operator action, oldest first."""
    instance = load(conn, saga_id)
    steps = (
        conn.execute(
            select(saga_steps)
            .where(saga_steps.c.saga_id == instance.id)
            .order_by(saga_steps.c.sent_at, saga_steps.c.attempt)
        )
        .mappings()
        .all()
    )
    actions = (
        conn.execute(
            select(saga_operator_actions)
            .where(saga_operator_actions.c.saga_id == instance.id)
            .order_by(saga_operator_actions.c.id)
        )
        .mappings()
        .all()
    )
    return {
        "saga": instance.row,
        "steps": [dict(s) for s in steps],
        "actions": [dict(a) for a in actions],
    }


def list_sagas(
    conn: Connection,
    *,
    status: str | None = None,
    type_: str | None = None,
    account_id: int | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """Sagas newest first; ``before`` is the (created_at, id) of the last one already seen."""
    query = select(sagas).order_by(sagas.c.created_at.desc(), sagas.c.id.desc()).limit(limit)
    if status:
        query = query.where(sagas.c.status == status)
    if type_:
        query = query.where(sagas.c.type == type_)
    if account_id is not None:
        query = query.where(sagas.c.account_id == account_id)
    if before is not None:
        query = query.where(tuple_(sagas.c.created_at, sagas.c.id) < tuple_(*before))
    return [dict(row) for row in conn.execute(query).mappings()]


def steps_of(definition: SagaDefinition) -> Iterable[str]:
    return (step.name for step in definition.steps)


def counts_by_type_and_status(engine: Engine) -> list[tuple[str, str, int]]:
    """How many sagas of each type are in each status (for /metrics)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(sagas.c.type, sagas.c.status, func.count()).group_by(
                sagas.c.type, sagas.c.status
            )
        ).all()
    return [(t, s, n) for t, s, n in rows]
