"""The read model's own connections to Redis nodes, for batches of commands sent in one round
trip, on one node or across a cluster's nodes (``Functions.run`` sends through ``Batches``).

Through redis-py's pipelines a feed page's two round trips spent more of the API's CPU than
Redis did: each pooled checkout takes a lock and polls the socket, each command is packed
through a layer of checks, and each of a page's replies passes through redis-py's bookkeeping
before hiredis parses it. Here a command list is packed by hiredis in one call and
the replies are parsed by hiredis's reader straight from the socket (docs/performance.md).

What the library does that this does not, it is left to: a TLS or RESP3 connection, or a
credential provider, makes ``Batches`` send through the library's pipelines; and on a cluster,
the commands that meet a redirection (MOVED, ASK, TRYAGAIN, ...) or a dead node are sent again
through redis-py's cluster pipeline, which follows them and refreshes the slot table this
module routes by. So these are for commands that may safely run twice: all the read model's are.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import hiredis
import redis

Command = tuple[Any, ...]

# A cluster's answers that a node is not (or not yet, or no longer) the one for a key.
REDIRECTIONS = frozenset({"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "LOADING"})
# Verbs a replica may answer (``REDIS_READ_FROM_REPLICAS``); the rest go to the primary.
READS = frozenset(
    {"FCALL_RO", "HGET", "HMGET", "HGETALL", "HEXISTS", "EXISTS", "SMISMEMBER"}
    | {"ZRANGEBYSCORE", "ZSCORE", "ZMSCORE"}
)
_SUPPORTED = (redis.connection.Connection, redis.connection.UnixDomainSocketConnection)


def _reply_error(message: str) -> redis.ResponseError:
    if message.startswith("NOSCRIPT"):
        return redis.exceptions.NoScriptError(message)
    return redis.ResponseError(message)


def is_redirection(reply: Any) -> bool:
    return isinstance(reply, redis.ResponseError) and (str(reply).split(" ", 1)[0] in REDIRECTIONS)


def pipelined(client: Any, commands: Sequence[Command]) -> list[Any]:
    """``commands`` through the library's pipeline (per node, redirections followed, on a
    cluster); the first error reply raises."""
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute()


def supported(pool: redis.ConnectionPool) -> bool:
    """Whether a pool's connections are plain enough for a ``Link``: TCP or a unix socket,
    RESP2, a password or none."""
    kwargs = pool.connection_kwargs
    return (
        pool.connection_class in _SUPPORTED
        and kwargs.get("credential_provider") is None
        and str(kwargs.get("protocol") or 2) == "2"
    )


class Link:
    """One connection to a Redis node: commands packed by hiredis, replies read by hiredis's
    reader from the socket. A link that failed in any way is closed, never used again."""

    def __init__(self, kwargs: dict[str, Any], *, readonly: bool = False) -> None:
        connect_timeout = kwargs.get("socket_connect_timeout") or kwargs.get("socket_timeout")
        path = kwargs.get("path")
        try:
            if path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(connect_timeout)
                sock.connect(path)
            else:
                address = (kwargs.get("host", "localhost"), int(kwargs.get("port", 6379)))
                sock = socket.create_connection(address, timeout=connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as error:
            raise redis.ConnectionError(f"Error connecting to Redis: {error}") from error
        sock.settimeout(kwargs.get("socket_timeout"))
        self.sock = sock
        self.reader = hiredis.Reader(replyError=_reply_error)
        handshake: list[Command] = []
        if kwargs.get("password"):
            handshake.append(("AUTH", *filter(None, [kwargs.get("username")]), kwargs["password"]))
        if kwargs.get("db"):
            handshake.append(("SELECT", kwargs["db"]))
        if kwargs.get("client_name"):
            handshake.append(("CLIENT", "SETNAME", kwargs["client_name"]))
        if readonly:
            handshake.append(("READONLY",))
        if handshake:
            self.send(handshake)
            for reply in self.receive(len(handshake)):
                if isinstance(reply, redis.ResponseError):
                    self.close()
                    raise redis.ConnectionError(f"Redis refused the connection: {reply}")

    def send(self, commands: Sequence[Command]) -> None:
        try:
            self.sock.sendall(b"".join([hiredis.pack_command(c) for c in commands]))
        except OSError as error:
            raise _io_error(error) from error

    def receive(self, count: int) -> list[Any]:
        """The next ``count`` replies; an error reply is a ``ResponseError`` among them."""
        replies: list[Any] = []
        reader, sock = self.reader, self.sock
        while len(replies) < count:
            reply = reader.gets()
            if reply is False:  # hiredis's "not enough data yet"
                try:
                    data = sock.recv(65536)
                except OSError as error:
                    raise _io_error(error) from error
                if not data:
                    raise redis.ConnectionError("Connection closed by server.")
                reader.feed(data)
            else:
                replies.append(reply)
        return replies

    def close(self) -> None:
        self.sock.close()


def _io_error(error: OSError) -> redis.RedisError:
    if isinstance(error, socket.timeout):
        return redis.TimeoutError("Timeout reading from Redis")
    return redis.ConnectionError(f"Error talking to Redis: {error}")


_yields: bool | None = None  # known at the first batch: gevent patches a worker first


def give_way() -> None:
    """Under gevent, give the worker's other greenlets their turn before a batch goes out
    (``time.sleep(0)``, gevent's: a turn of the event loop; not under threads, where it was
    not measured): the batches of one turn then reach Redis together instead of one by one,
    each waking it (a shorter read tail and fewer Redis wakeups; docs/performance.md)."""
    global _yields
    if _yields is None:
        try:
            from gevent import monkey
        except ImportError:
            _yields = False
        else:
            _yields = monkey.is_module_patched("time")
    if _yields:
        time.sleep(0)


class HeldConnections:
    """This process's links to one Redis node, reused after complete replies.

    A link is popped from a list and pushed back after complete replies; one that failed in any
    way (an error, a timeout, the greenlet interrupted) is closed and dropped, so an idle one
    never holds an unread reply. A batch that fails on a reused link with a connection error
    runs once more on a new one, since the server may have closed the idle link (a restart).

    At most ``max_open`` links are open at once (the client pool's own limit by default), and
    as many may stay idle (``max_idle``): a worker that once had that many reads in flight
    keeps their links instead of opening and closing one a call. A call past ``max_open``
    goes through the client and its pool, within that pool's own limit.

    The idle list and the set of links in a call are used without a lock: ``pop``, ``append``,
    ``add`` and ``discard`` are atomic (the GIL) and never switch greenlets, and the count of
    open links is their sizes, not a counter that racing threads could lose updates of. A new
    link is counted before the limit is checked, so racing threads cannot all pass the check.
    After a fork the child opens its own.
    """

    def __init__(
        self,
        client: redis.Redis,
        max_idle: int | None = None,
        max_open: int | None = None,
        *,
        readonly: bool = False,
    ) -> None:
        self.client = client
        self.max_open = max_open or client.connection_pool.max_connections
        self.max_idle = self.max_open if max_idle is None else max_idle
        self.readonly = readonly
        self._kwargs = client.connection_pool.connection_kwargs
        self._idle: list[Link] = []
        self._in_use: set[Link] = set()
        self._closed = False
        self._pid = os.getpid()

    def run(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` in one round trip; their replies, or the first error reply raised
        once every reply is read."""
        give_way()
        sent = self.send(commands)
        replies = pipelined(self.client, commands) if sent is None else self.receive(sent, commands)
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    def send(self, commands: Sequence[Command]) -> tuple[Link, bool] | None:
        """Send ``commands`` on a link: the link and whether it was reused (for ``receive``);
        None past ``max_open`` (the caller sends them another way)."""
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours to use
            self._idle, self._in_use, self._pid = [], set(), os.getpid()
        try:
            link = self._idle.pop()
        except IndexError:
            pass
        else:
            self._in_use.add(link)
            try:
                link.send(commands)
                return link, True
            except redis.ConnectionError:
                self._drop(link)  # closed while idle: a new one below
        return self._send_on_new(commands)

    def receive(self, sent: tuple[Link, bool], commands: Sequence[Command]) -> list[Any]:
        """The replies of ``commands`` sent by ``send``; error replies among them."""
        link, reused = sent
        try:
            replies = link.receive(len(commands))
        except redis.ConnectionError:
            self._drop(link)
            if not reused:
                raise
            # the server may have closed it while it was idle: once more, on a new one
            again = self._send_on_new(commands)
            if again is None:
                return pipelined(self.client, commands)
            return self.receive(again, commands)
        except BaseException:
            self._drop(link)
            raise
        self._give_back(link)
        return replies

    def idle(self) -> int:
        """How many links wait for the next call."""
        return len(self._idle)

    def open(self) -> int:
        """How many links are open: idle or in a call."""
        return len(self._idle) + len(self._in_use)

    def close(self) -> None:
        """Close the idle links now, and those in a call when their call ends."""
        self._closed = True
        while self._idle:
            self._drop(self._idle.pop())

    def _send_on_new(self, commands: Sequence[Command]) -> tuple[Link, bool] | None:
        placeholder = object()
        self._in_use.add(placeholder)  # counted before the check: racing threads see each other
        try:
            if self.open() > self.max_open:
                return None
            link = Link(self._kwargs, readonly=self.readonly)
        finally:
            self._in_use.discard(placeholder)
        self._in_use.add(link)
        try:
            link.send(commands)
        except BaseException:
            self._drop(link)
            raise
        return link, False

    def _give_back(self, link: Link) -> None:
        if self._closed or len(self._idle) >= self.max_idle:
            self._drop(link)
        else:
            self._idle.append(link)
            self._in_use.discard(link)

    def _drop(self, link: Link) -> None:
        self._in_use.discard(link)
        link.close()


class Batches:
    """Sends a batch of commands in one round trip per node: on one node, or on a cluster's
    nodes at once, each command to the node of its key's slot."""

    def __init__(self, client: Any, *, held: bool = True) -> None:
        self.client = client
        self.cluster = isinstance(client, redis.RedisCluster)
        self.from_replicas = self.cluster and client.load_balancing_strategy is not None
        self._nodes: dict[str, HeldConnections] = {}
        self._own = held and (self.cluster or supported(client.connection_pool))
        if not self.cluster and self._own:
            self._node = HeldConnections(client)

    def run(self, commands: Sequence[Command]) -> list[Any]:
        """The replies of ``commands``, in order; the first error reply raises, after every
        command has run."""
        if not self.cluster and self._own:
            return self._node.run(commands)
        give_way()
        if not self._own:
            return pipelined(self.client, commands)
        return self._run_on_cluster(commands)

    def close(self) -> None:
        held = [*self._nodes.values(), *([self._node] if not self.cluster and self._own else [])]
        for node in held:
            node.close()

    def _run_on_cluster(self, commands: Sequence[Command]) -> list[Any]:
        by_node: dict[str, list[int]] = {}
        chosen: dict[int, str] = {}  # a slot's commands go to one node, replica or primary
        for i, command in enumerate(commands):
            by_node.setdefault(self._node_for(command, chosen), []).append(i)
        replies: list[Any] = [None] * len(commands)
        again: list[int] = []  # for the library's pipeline: redirected, or the node is down
        sent = []
        for name, indexes in by_node.items():
            batch = [commands[i] for i in indexes]
            try:
                link = self._nodes[name].send(batch)
            except redis.ConnectionError:
                link = None
            if link is None:
                again.extend(indexes)
            else:
                sent.append((name, indexes, batch, link))
        for name, indexes, batch, link in sent:
            try:
                answers = self._nodes[name].receive(link, batch)
            except redis.ConnectionError:
                again.extend(indexes)
                continue
            for i, reply in zip(indexes, answers, strict=True):
                if is_redirection(reply):
                    again.append(i)
                else:
                    replies[i] = reply
        if again:
            again.sort()
            redone = pipelined(self.client, [commands[i] for i in again])
            for i, reply in zip(again, redone, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    def _node_for(self, command: Command, chosen: dict[int, str]) -> str:
        """The name of the node that answers ``command`` (its held links made on first use):
        in one batch, the node ``chosen`` for its slot before, if that one may answer it."""
        verb = command[0]
        key = command[3] if verb in ("FCALL", "FCALL_RO", "EVALSHA") else command[1]
        nodes = self.client.nodes_manager
        slot = self.client.keyslot(key)
        reads = self.from_replicas and verb in READS
        if reads and slot in chosen:
            return chosen[slot]
        if reads:
            node = nodes.get_node_from_slot(
                slot, load_balancing_strategy=self.client.load_balancing_strategy
            )
        else:
            node = nodes.get_node_from_slot(slot)
        if node.name not in self._nodes:
            self._nodes[node.name] = HeldConnections(
                self.client.get_redis_connection(node), readonly=node.server_type == "replica"
            )
        if reads:
            chosen[slot] = node.name
        return node.name
