"""The Dramatiq broker, chosen by BROKER_URL: ``amqp://`` is RabbitMQ (publisher confirms on,
quorum queues), ``redis://`` or ``unix://`` is Dramatiq's Redis broker (the embedded default).

``BROKER_URL`` may name several RabbitMQ nodes of one cluster, separated by commas (or ``;``,
as Dramatiq spells it): a connection goes to the first that answers, and a process whose node
died connects to another. Quorum queues are replicated on the cluster's nodes, so a node's
death loses no confirmed message.

Quorum queues cannot take the names of classic ones (RabbitMQ refuses to redeclare a queue
with another type), so on RabbitMQ every queue name ends in ``QUORUM_SUFFIX``: a deployment
that ran with classic queues starts on new queues, and ``python -m workers.queues
move-classic`` moves what the old ones still hold (``workers/queues.py``).
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlparse

import dramatiq
import pika
import redis
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL, RabbitmqBroker, _RabbitmqConsumer
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import xq_name
from dramatiq.errors import ConnectionClosed

from feed.config import Settings, broker_urls
from workers.middleware import ActorMetrics, CorrelationId
from workers.retries import OutageRetries

QUORUM = {"x-queue-type": "quorum"}
QUORUM_SUFFIX = ".q"
QUEUES = ("projections", "sagas", "fanout")


def is_rabbitmq(url: str) -> bool:
    return urlparse(broker_urls(url)[0]).scheme in {"amqp", "amqps"}


def queue_name(settings: Settings, base: str) -> str:
    """The name of queue ``base`` (one of ``QUEUES``) on this deployment's broker."""
    suffix = QUORUM_SUFFIX if settings.broker_url and is_rabbitmq(settings.broker_url) else ""
    return f"{settings.queue_prefix}{base}{suffix}"


class ErrorKeepingConsumer(_RabbitmqConsumer):
    """A consumer whose dead letters keep the error that killed them, as the Redis broker's
    do: RabbitMQ's own dead-lettering (a nack) keeps the body as it was first sent. The
    message as it failed (its options hold the traceback) is published to the dead-letter
    queue with a confirm, on the worker thread's own channel, then the delivery acknowledged;
    should the publish fail, a plain nack dead-letters it without its error. (A crash between
    the confirm and the acknowledgement leaves a duplicate: every actor is safe to run twice.)"""

    def nack(self, message: Any) -> None:
        if message._tag not in self.known_tags:
            super().nack(message)  # redelivered since (a new connection): nothing to move
            return
        try:
            self.broker.channel.basic_publish(
                exchange="",
                routing_key=xq_name(message.queue_name),
                body=message.encode(),
                properties=pika.BasicProperties(delivery_mode=2),
                mandatory=True,
            )
        except Exception:  # noqa: BLE001 - dead-lettered all the same, without its error
            with contextlib.suppress(Exception):
                del self.broker.connection  # a dead link: the next call opens another
            super().nack(message)
            return
        self.ack(message)


class ErrorKeepingRedisConsumer(_RedisConsumer):
    """The Redis broker's consumer, whose dead letters keep the error that killed them: the
    message as it failed replaces its stored body before the nack moves that body to the
    dead letters."""

    def nack(self, message: Any) -> None:
        stored = f"{self.broker.namespace}:{self.queue_name}.msgs"
        redis_id = message.options["redis_message_id"]
        try:
            # only while it is there: a message moved meanwhile is not written back
            if self.broker.client.hexists(stored, redis_id):
                self.broker.client.hset(stored, redis_id, message.encode())
        except redis.ConnectionError as error:  # as the broker's own nack says it
            raise ConnectionClosed(error) from None
        super().nack(message)


class ErrorKeepingRedisBroker(RedisBroker):
    """Dramatiq's Redis broker, with dead letters that keep their error."""

    @property
    def consumer_class(self) -> type[ErrorKeepingRedisConsumer]:
        return ErrorKeepingRedisConsumer


class QuorumRabbitmqBroker(RabbitmqBroker):
    """Dramatiq's RabbitMQ broker with quorum queues: the canonical queues, their delay
    queues and their dead-letter queues (which keep Dramatiq's fixed message TTL)."""

    @property
    def consumer_class(self) -> type[ErrorKeepingConsumer]:
        return ErrorKeepingConsumer

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        return {**super()._build_queue_arguments(queue_name), **QUORUM}

    def _declare_xq_queue(self, queue_name: str) -> Any:
        return self.channel.queue_declare(
            queue=xq_name(queue_name),
            durable=True,
            arguments={"x-message-ttl": DEAD_MESSAGE_TTL, **QUORUM},
        )


def build_broker(url: str) -> dramatiq.Broker:
    """A broker for ``url`` with this project's middleware."""
    scheme = urlparse(broker_urls(url)[0]).scheme
    if scheme in {"amqp", "amqps"}:
        broker: dramatiq.Broker = QuorumRabbitmqBroker(url=broker_urls(url), confirm_delivery=True)
    elif scheme in {"redis", "rediss", "unix"}:
        broker = ErrorKeepingRedisBroker(url=url)
    else:
        raise ValueError(f"BROKER_URL scheme {scheme!r} is neither amqp nor redis")
    broker.add_middleware(CorrelationId())
    broker.add_middleware(ActorMetrics())
    return broker


def setup_broker(settings: Settings | None = None) -> dramatiq.Broker:
    """Make the broker for this process's settings the global one (actors bind to it)."""
    settings = settings or Settings.from_env()
    if not settings.broker_url:
        raise RuntimeError("BROKER_URL is not set (make run sets it for every process)")
    broker = build_broker(settings.broker_url)
    broker.add_middleware(OutageRetries(settings.message_max_retries))
    dramatiq.set_broker(broker)
    return broker
