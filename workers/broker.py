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

from typing import Any
from urllib.parse import urlparse

import dramatiq
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL, RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import xq_name

from feed.config import Settings, broker_urls
from workers.middleware import ActorMetrics, CorrelationId

QUORUM = {"x-queue-type": "quorum"}
QUORUM_SUFFIX = ".q"
QUEUES = ("projections", "sagas", "fanout")


def is_rabbitmq(url: str) -> bool:
    return urlparse(broker_urls(url)[0]).scheme in {"amqp", "amqps"}


def queue_name(settings: Settings, base: str) -> str:
    """The name of queue ``base`` (one of ``QUEUES``) on this deployment's broker."""
    suffix = QUORUM_SUFFIX if settings.broker_url and is_rabbitmq(settings.broker_url) else ""
    return f"{settings.queue_prefix}{base}{suffix}"


class QuorumRabbitmqBroker(RabbitmqBroker):
    """Dramatiq's RabbitMQ broker with quorum queues: the canonical queues, their delay
    queues and their dead-letter queues (which keep Dramatiq's fixed message TTL)."""

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
        broker = RedisBroker(url=url)
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
    dramatiq.set_broker(broker)
    return broker
