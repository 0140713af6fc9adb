"""The Dramatiq broker, chosen by BROKER_URL: ``amqp://`` is RabbitMQ (publisher confirms on),
``redis://`` or ``unix://`` is Dramatiq's Redis broker (the embedded default)."""

from __future__ import annotations

from urllib.parse import urlparse

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from feed.config import Settings
from workers.middleware import ActorMetrics, CorrelationId


def build_broker(url: str) -> dramatiq.Broker:
    """A broker for ``url`` with this project's middleware."""
    scheme = urlparse(url).scheme
    if scheme in {"amqp", "amqps"}:
        broker: dramatiq.Broker = RabbitmqBroker(url=url, confirm_delivery=True)
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
