"""One command, one PostgreSQL transaction: its rows and its outbox events commit together."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from sqlalchemy import Connection, Engine

from feed.events import Event
from feed.outbox import append_events, last_position, statement_params


class UnitOfWork:
    """A transaction that collects events and appends them to the outbox before it commits.

    Leaving the ``with`` block without ``commit()`` (or by an exception) rolls everything back,
    rows and events alike.

    ``single_statement=True`` is for a command that writes everything, its events included, in
    one statement: it passes its events in with ``in_statement`` and says where they went with
    ``appended``. That statement runs in autocommit, a transaction of its own, without the
    ``BEGIN`` and ``COMMIT`` round trips. Events cannot be ``emit``-ted in that mode: they
    would commit apart from the rows.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        correlation_id: str | None = None,
        single_statement: bool = False,
    ) -> None:
        self._engine = engine
        self.correlation_id = correlation_id
        self.single_statement = single_statement
        self._pending: list[Event] = []
        self.position = 0
        self.conn: Connection

    def __enter__(self) -> UnitOfWork:
        self.conn = self._engine.connect()
        if self.single_statement:
            # The pool resets the connection to transactions when it is returned.
            self.conn.execution_options(isolation_level="AUTOCOMMIT")
        self._transaction = self.conn.begin()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        finally:
            self.conn.close()

    def emit(self, *events: Event) -> None:
        """Queue events; they are written to the outbox by ``flush_events``/``commit``."""
        if self.single_statement:
            raise RuntimeError("A single-statement command writes its events in its statement.")
        self._pending.extend(events)

    def in_statement(self, event: Event) -> dict[str, Any]:
        """The parameters with which the command's own statement appends ``event``
        (``outbox.append_when``)."""
        return statement_params(event, self.correlation_id)

    def appended(self, position: int) -> None:
        """The command's own statement wrote events to the outbox, up to ``position``."""
        self.position = max(self.position, position)

    def flush_events(self) -> int:
        """Write queued events to the outbox now; return the last position among them that the
        read model projects (and marks applied: a consistency token names it).

        With none (no events, or saga messages only) it is the last such position in the
        outbox, so a token built from it still means "at least everything committed before
        this command", and its wait ends once that is projected.
        """
        if self._pending:
            appended = append_events(self.conn, self._pending, correlation_id=self.correlation_id)
            self.position = max(self.position, appended)
            self._pending.clear()
        if not self.position:  # nothing the read model marks: the last event it will
            self.position = last_position(self.conn)
        return self.position

    def commit(self) -> None:
        """Write the queued events and commit the transaction."""
        self.flush_events()
        self._transaction.commit()
