"""The one place that builds clients from settings: engine, Redis, hashers, tokens.

Nothing connects at import time; tests build their own ``Services`` from their settings.
"""

from __future__ import annotations

import gc
import select
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import redis
from gevent.monkey import get_original
from redis._parsers import CommandsParser
from redis.cluster import ClusterNode, LoadBalancingStrategy
from sqlalchemy import Engine, create_engine, event, exc, text

from feed.auth import ActiveAccounts, Passwords, Tokens
from feed.config import Settings, broker_urls, sqlalchemy_url
from feed.consistency import ConsistencyTokens
from feed.errors import InvalidInput
from feed.hash_slots import HashSlots
from feed.origin import check_at_start
from feed.readmodel import FeedKeepAlive, Store
from feed.readmodel.sources import FeedSources, Placements
from feed.sessions import RefreshTokens


@dataclass
class Services:
    """The clients a process uses, built once from its settings."""

    settings: Settings
    engine: Engine
    redis: redis.Redis
    passwords: Passwords
    tokens: Tokens
    consistency: ConsistencyTokens
    store: Store
    keep_alive: FeedKeepAlive = field(default_factory=FeedKeepAlive)
    active_accounts: ActiveAccounts | None = None
    refresh_tokens: RefreshTokens | None = None
    # Handlers of commands that other packages carry out, by command type (a post with media
    # is published by a saga), and collectors for /metrics: filled in by app.py.
    handlers: dict[type, Callable[[Any, Any], Any]] = field(default_factory=dict)
    collectors: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.refresh_tokens is None:
            self.refresh_tokens = RefreshTokens(
                self.settings.signing_key("refresh-tokens"),
                self.settings.refresh_token_ttl_seconds,
            )
        if self.active_accounts is None:
            self.active_accounts = ActiveAccounts(
                self.engine,
                self.settings.account_status_cache_seconds,
                self.settings.token_ttl_seconds,
            )

    def handler_for(self, command: Any) -> Callable[[Any, Any], Any]:
        try:
            return self.handlers[type(command)]
        except KeyError:
            raise InvalidInput(f"{type(command).__name__} is not available here.") from None

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()
        self.store.close()


def build_engine(database_url: str, *, pool_size: int = 20) -> Engine:
    """A SQLAlchemy engine on psycopg 3 with a bounded pool and short connect timeout.

    The pool keeps every connection it opens, up to ``pool_size`` (no overflow): an overflow
    connection is closed as soon as it is returned to a full pool, and under a burst of
    concurrent commands that meant a new PostgreSQL session (a forked backend, its caches
    rebuilt) every few requests (docs/performance.md). A request
    beyond the pool waits up to ``pool_timeout`` for a connection, then gets a 503.

    A pooled connection the server has closed (a restart, an idle timeout, a terminated
    backend) is replaced when it is checked out, by ``drop_if_closed_by_server``: the same
    protection as ``pool_pre_ping`` without its round trip on every checkout.
    """
    engine = create_engine(
        sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=5,
        # A stuck lock or query fails (503) instead of holding request threads forever; a
        # session whose client went silent mid-transaction (a partition, a frozen process)
        # ends after 30 s, not hours later, and lets go of its locks and advisory locks.
        connect_args={
            "connect_timeout": 5,
            "options": "-c lock_timeout=5000 -c statement_timeout=30000"
            " -c idle_in_transaction_session_timeout=30000",
        },
    )
    event.listen(engine, "checkout", drop_if_closed_by_server)
    return engine


# The system's poll even where gevent has patched ``select``: a poll with no timeout never
# blocks, and gevent's emulation of it cost a checkout many times more.
_poll = get_original("select", "poll")


def drop_if_closed_by_server(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Refuse a pooled connection the server has hung up on; the pool then opens a new one.

    An idle connection in the pool has nothing to read. When its socket is readable all the
    same, the server has said goodbye (PostgreSQL sends "terminating connection" before it
    closes) or the socket is closed; a local check, no round trip. (SQLAlchemy's "pessimistic
    disconnect handling, custom" pattern: raising ``DisconnectionError`` in ``checkout``.)
    """
    if dbapi_connection.closed:
        raise exc.DisconnectionError("the pooled connection is closed")
    poller = _poll()  # not select.select: no limit on the descriptor's number
    poller.register(dbapi_connection.fileno(), select.POLLIN)
    if poller.poll(0):
        raise exc.DisconnectionError("the server closed the pooled connection")


_FAIL_FAST = {"socket_timeout": 2, "socket_connect_timeout": 2, "health_check_interval": 30}


def build_redis(redis_url: str) -> redis.Redis:
    """A Redis client that fails fast when the server is down."""
    return redis.Redis.from_url(redis_url, **_FAIL_FAST)


class FunctionKeys(CommandsParser):
    """redis-py's command parser, but the keys of ``FCALL`` and ``FCALL_RO`` are read from the
    call itself (``FCALL name numkeys key...``), as redis-py already does for ``EVAL``. Its own
    way for commands with movable keys is a ``COMMAND GETKEYS`` round trip to the cluster's
    default node for every call, and none at all once that node is dead (it is not replaced)."""

    CALLS = frozenset({"FCALL", "FCALL_RO"})

    def get_keys(self, redis_conn: Any, *args: Any) -> list[Any] | None:
        if args and str(args[0]).upper() in self.CALLS:
            return list(args[3 : 3 + int(args[2])])
        return super().get_keys(redis_conn, *args)


class FeedRedisCluster(redis.RedisCluster):
    """redis-py's cluster client, routing function calls by their declared keys."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands_parser = FunctionKeys(self)  # its pipelines take it from here


def build_redis_cluster(
    nodes: tuple[str, ...], *, from_replicas: bool = False
) -> redis.RedisCluster:
    """A Redis Cluster client from some of its nodes (``host:port``); it learns the rest, and
    follows MOVED and ASK redirections and failovers. ``from_replicas`` sends read-only
    commands to the replicas too, in turn."""
    startup = []
    for node in nodes:
        host, _, port = node.rpartition(":")
        startup.append(ClusterNode(host or "127.0.0.1", int(port)))
    balancing = LoadBalancingStrategy.ROUND_ROBIN if from_replicas else None
    return FeedRedisCluster(startup_nodes=startup, load_balancing_strategy=balancing, **_FAIL_FAST)


def build_store_clients(settings: Settings) -> tuple[Any, Any]:
    """The read model's clients: one to the primaries, and one for reads that carry no
    consistency token (the replicas too when ``REDIS_READ_FROM_REPLICAS`` is set)."""
    if settings.redis_cluster_nodes:
        primary = build_redis_cluster(settings.redis_cluster_nodes)
        if settings.redis_read_from_replicas:
            return primary, build_redis_cluster(settings.redis_cluster_nodes, from_replicas=True)
        return primary, primary
    client = build_redis(settings.redis_url)
    return client, client


def build_services(settings: Settings, *, placements: Sequence[Placements] = ()) -> Services:
    """Build every client from ``settings`` (which must name real servers by now);
    ``placements`` are the feeds' other sources than follows (``sagas.bootstrap`` names them)."""
    if not (settings.database_url and settings.has_redis):
        raise RuntimeError(
            "DATABASE_URL and REDIS_URL (or REDIS_CLUSTER_NODES) are not set: start the "
            "service with `make run` "
            "(python -m feed.launcher), which embeds PostgreSQL and Redis when they are missing."
        )
    engine = build_engine(settings.database_url)
    client, replica = build_store_clients(settings)
    store = Store(client, engine, settings, replica=replica, sources=FeedSources(placements))
    check_at_start(store)  # a read model of another database, or of its past, is cleared
    return Services(
        settings=settings,
        engine=engine,
        redis=client,
        store=store,
        passwords=Passwords(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_cost,
            parallelism=settings.argon2_parallelism,
            slots=HashSlots(
                settings.data_dir / "hash-slots",
                settings.hash_cpu_share,
                settings.hash_wait_ms / 1000,
            ),
        ),
        tokens=Tokens(
            settings.signing_key("tokens"), settings.token_ttl_seconds, settings.legacy_keys
        ),
        consistency=ConsistencyTokens(
            settings.signing_key("consistency-tokens"),
            settings.consistency_token_ttl_seconds,
            settings.consistency_token_max_age_seconds,
            settings.legacy_keys,
        ),
    )


def freeze_heap() -> None:
    """Exempt every object alive now (modules, the app, clients) from garbage collection.

    A long-lived process starts with ~130,000 tracked objects; each full (oldest-generation)
    collection walks them all, a pause of tens to a hundred milliseconds that stalls every
    request of a gevent worker at once. Frozen, they are never walked again; the collector
    only sees what requests and messages allocate. Call once start-up is done
    (docs/performance.md has what it did to the slowest requests).
    """
    gc.collect()
    gc.freeze()


def check_database(engine: Engine) -> None:
    """Raise when PostgreSQL does not answer."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def check_redis(client: redis.Redis) -> None:
    """Raise when Redis does not answer."""
    client.ping()


def check_broker(broker_url: str | None) -> None:
    """Raise when the message broker does not answer (RabbitMQ or Redis, by URL scheme)."""
    if not broker_url:
        raise RuntimeError("BROKER_URL is not set")
    scheme = urlparse(broker_url).scheme
    if scheme in {"amqp", "amqps"}:
        import pika

        nodes = []
        for url in broker_urls(broker_url):  # any one node of a cluster will do
            params = pika.URLParameters(url)
            params.socket_timeout = 2
            params.blocked_connection_timeout = 2
            params.connection_attempts = 1
            nodes.append(params)
        connection = pika.BlockingConnection(nodes)
        connection.close()
    elif scheme in {"redis", "rediss", "unix"}:
        client = build_redis(broker_url)
        try:
            client.ping()
        finally:
            client.close()
    else:
        raise RuntimeError(f"unsupported broker scheme {scheme!r}")
