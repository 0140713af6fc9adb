"""Dead letters: the messages a worker gave up on, listed by queue, actor and error, and moved
back to their queues for the workers to run again (``flask dead-letters``, the operators' page).

A message is dead-lettered when its actor raised an error that is not a dependency's outage
``MESSAGE_MAX_RETRIES`` times, or one no retry can help (an undecodable message). The brokers
keep dead letters for 7 days (Dramatiq's ``DEAD_MESSAGE_TTL``). Moving one back puts it at the
end of its queue with its retries reset; every actor is safe to run twice, so a crash between
the copy and the removal of the dead one costs a duplicate at worst.

On RabbitMQ the dead-letter queues are ``<queue>.XQ``; on the Redis broker (the embedded
default) a sorted set ``dramatiq:<queue>.XQ`` of message ids and a hash ``….XQ.msgs`` of
their bodies.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import redis
from dramatiq import Message
from dramatiq.common import q_name, xq_name
from dramatiq.errors import DecodeError

from feed.config import Settings, broker_urls
from workers.broker import QUEUES, is_rabbitmq, queue_name

# Redis broker's key namespace (Dramatiq's default).
NAMESPACE = "dramatiq"
# How many dead letters of a queue a listing reads to group them (the count is exact): on
# RabbitMQ each is a basic_get, and held from other readers until the listing ends.
LIST_AT_MOST = 1000


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message: its queue (as ``QUEUES`` names it), actor and last error."""

    queue: str
    actor: str
    error: str


UNDECODABLE = "not a Dramatiq message (left where it is by a redrive)"


def _decoded(body: bytes) -> Message | None:
    """The message a dead letter holds, or None when its body is not one."""
    try:
        return Message.decode(body)
    except DecodeError:
        return None


def error_of(message: Message) -> str:
    """The last line of the traceback the message was dead-lettered with."""
    lines = (message.options.get("traceback") or "").strip().splitlines()
    return lines[-1][:300] if lines else "unknown"


def revived(message: Message) -> Message:
    """The message as it goes back to its queue: its retries, error and delay reset."""
    options = {
        k: v
        for k, v in message.options.items()
        if k not in ("retries", "faults", "max_retries", "traceback", "requeue_timestamp", "eta")
    }
    return message.copy(queue_name=q_name(message.queue_name), options=options)


@dataclass(frozen=True)
class Summary:
    """Dead letters grouped by queue, actor and error; ``total`` per queue is exact."""

    groups: dict[DeadLetter, int]
    totals: dict[str, int]

    def as_rows(self) -> list[dict[str, Any]]:
        return [
            {"queue": d.queue, "actor": d.actor, "error": d.error, "count": n}
            for d, n in sorted(self.groups.items(), key=lambda item: (item[0].queue, -item[1]))
        ]


def summarize(settings: Settings) -> Summary:
    """Every queue's dead letters, grouped."""
    groups: Counter[DeadLetter] = Counter()
    totals: dict[str, int] = {}
    with _open(settings) as letters:
        for base in QUEUES:
            totals[base] = letters.count(base)
            for message in letters.peek(base, LIST_AT_MOST):
                if message is None:
                    groups[DeadLetter(base, "?", UNDECODABLE)] += 1
                else:
                    groups[DeadLetter(base, message.actor_name, error_of(message))] += 1
    return Summary(dict(groups), totals)


def redrive(
    settings: Settings,
    *,
    limit: int | None = None,
    queue: str | None = None,
    actor: str | None = None,
    dry_run: bool = False,
) -> dict[str, int]:
    """Move dead letters back to their queues (at most ``limit`` in all, of one queue or actor
    if asked); how many per queue (would be) moved."""
    moved: dict[str, int] = {}
    left = limit
    with _open(settings) as letters:
        for base in QUEUES:
            if queue not in (None, base):
                continue
            if left is not None and left <= 0:
                break
            count = letters.move_back(base, left, actor=actor, dry_run=dry_run)
            moved[base] = count
            if left is not None:
                left -= count
    return moved


@contextlib.contextmanager
def _open(settings: Settings) -> Iterator[RabbitmqDeadLetters | RedisDeadLetters]:
    """The broker's dead letters, opened for one listing or redrive."""
    if not settings.broker_url:
        raise RuntimeError("BROKER_URL is not set")
    rabbitmq = is_rabbitmq(settings.broker_url)
    letters = RabbitmqDeadLetters(settings) if rabbitmq else RedisDeadLetters(settings)
    try:
        yield letters
    finally:
        letters.close()


class RabbitmqDeadLetters:
    """Dead letters on RabbitMQ: read with ``basic_get``; a listing acknowledges nothing (the
    channel's close gives every message back), a redrive publishes each to its queue with a
    confirm before acknowledging the dead one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        nodes = [pika.URLParameters(url) for url in broker_urls(settings.broker_url or "")]
        self.connection = pika.BlockingConnection(nodes)

    def _queue(self, base: str) -> str:
        return xq_name(queue_name(self.settings, base))

    def count(self, base: str) -> int:
        channel = self.connection.channel()
        try:
            return channel.queue_declare(self._queue(base), passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:  # never declared: no dead letters
            return 0
        finally:
            if channel.is_open:
                channel.close()

    def peek(self, base: str, at_most: int) -> Iterator[Message | None]:
        if not self.count(base):
            return
        channel = self.connection.channel()
        try:
            for _ in range(at_most):
                method, _, body = channel.basic_get(self._queue(base))
                if method is None:
                    return
                yield _decoded(body)
        finally:
            channel.close()  # unacknowledged: every message read stays where it was

    def move_back(self, base: str, limit: int | None, *, actor: str | None, dry_run: bool) -> int:
        # What is there now, no more: a message moved back that fails at once comes back to
        # the end of the queue, and is not moved again.
        there = self.count(base)
        if not there:
            return 0
        channel = self.connection.channel()
        channel.confirm_delivery()
        moved = 0
        try:
            for _ in range(there):
                if limit is not None and moved >= limit:
                    break
                method, properties, body = channel.basic_get(self._queue(base))
                if method is None:
                    break
                message = _decoded(body)
                matches = message is not None and actor in (None, message.actor_name)
                if dry_run or not matches:  # left unacknowledged: it stays a dead letter
                    moved += matches
                    continue
                again = revived(message)
                # mandatory: a message no queue takes raises instead of being confirmed
                channel.basic_publish(
                    "", again.queue_name, again.encode(), properties, mandatory=True
                )
                channel.basic_ack(method.delivery_tag)
                moved += 1
        finally:
            channel.close()
        return moved

    def close(self) -> None:
        self.connection.close()


class RedisDeadLetters:
    """Dead letters on Dramatiq's Redis broker: a redrive enqueues each message again through
    the broker before removing the dead one."""

    def __init__(self, settings: Settings) -> None:
        from dramatiq.brokers.redis import RedisBroker

        self.settings = settings
        self.client = redis.Redis.from_url(settings.broker_url or "")
        self.broker = RedisBroker(client=self.client, namespace=NAMESPACE)

    def _keys(self, base: str) -> tuple[str, str]:
        dead = f"{NAMESPACE}:{xq_name(queue_name(self.settings, base))}"
        return dead, f"{dead}.msgs"

    def count(self, base: str) -> int:
        return int(self.client.zcard(self._keys(base)[0]))

    def peek(self, base: str, at_most: int) -> Iterator[Message | None]:
        ids, bodies = self._keys(base)
        found = self.client.zrange(ids, 0, at_most - 1)
        for body in self.client.hmget(bodies, found) if found else ():
            if body is not None:
                yield _decoded(body)

    def move_back(self, base: str, limit: int | None, *, actor: str | None, dry_run: bool) -> int:
        ids, bodies = self._keys(base)
        moved = 0
        for message_id in self.client.zrange(ids, 0, -1):
            if limit is not None and moved >= limit:
                break
            body = self.client.hget(bodies, message_id)
            if body is None:
                continue
            message = _decoded(body)
            if message is None or actor not in (None, message.actor_name):
                continue
            moved += 1
            if dry_run:
                continue
            again = revived(message)
            self.broker.declare_queue(again.queue_name)
            self.broker.enqueue(again)
            pipe = self.client.pipeline()
            pipe.zrem(ids, message_id)
            pipe.hdel(bodies, message_id)
            pipe.execute()
        return moved

    def close(self) -> None:
        self.client.close()
