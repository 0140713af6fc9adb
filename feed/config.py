"""Settings from the environment, with the embedded default when nothing is configured."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / ".data"


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    return int(raw) if raw not in (None, "") else default


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    return float(raw) if raw not in (None, "") else default


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def sqlalchemy_url(url: str) -> str:
    """Point a plain ``postgresql://`` URL at the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def broker_urls(url: str) -> list[str]:
    """The nodes a ``BROKER_URL`` names: one URL, or several separated by ``,`` or ``;``."""
    return [u.strip() for u in re.split(r"[,;](?=\s*amqps?://)", url) if u.strip()]


MIN_SECRET_KEY_BYTES = 32


def derive_key(secret_key: str, purpose: str) -> str:
    """The key of one purpose (tokens, CSRF, ...): HMAC-SHA256 of its name under
    ``SECRET_KEY``, so a signature made for one purpose is worthless for another."""
    return hmac.new(secret_key.encode(), f"feed:{purpose}".encode(), hashlib.sha256).hexdigest()


def limiter_storage_url(redis_url: str) -> str:
    """Flask-Limiter (``limits``) spells a Redis unix socket ``redis+unix://``."""
    if redis_url.startswith("unix://"):
        return "redis+unix://" + redis_url[len("unix://") :]
    return redis_url


MAX_HASH_WAIT_MS = 50


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment."""

    database_url: str | None = None
    redis_url: str | None = None
    redis_cluster_nodes: tuple[str, ...] = ()  # host:port of some of a Redis Cluster's nodes
    redis_read_from_replicas: bool = False
    redis_held_connections: bool = True  # False: batches through redis-py's pipelines
    broker_url: str | None = None
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    port: int = 8000
    data_dir: Path = DEFAULT_DATA_DIR
    token_ttl_seconds: int = 3600  # an access token; a refresh token makes the next one
    idempotency_ttl_seconds: int = 24 * 3600
    rate_limit_sessions: str = "10/minute;50/hour"
    rate_limit_commands: str = "120/minute"
    rate_limit_handle: str = "100/hour"  # failed logins at one handle, from anywhere
    rate_limit_handle_address: str = "10/hour"  # failed logins at one handle, from one address
    rate_limits_enabled: bool = True
    account_status_cache_seconds: float = 5.0  # a token dies with its account within this
    request_timeout_seconds: float = 10.0  # a request still running is answered 503 (0: never)
    behind_tls: bool = False  # answers carry Strict-Transport-Security
    consistency_token_ttl_seconds: int = 600  # after this a token no longer waits
    miss_seconds: float = 10.0  # an unknown post or account id is asked of PostgreSQL once in this
    rate_limit_anonymous_reads: str = "300/minute"  # reads without a token, per address
    rate_limit_signups: str = "10/hour"  # registrations per address
    saga_stuck_visible_seconds: float = 60.0  # a stuck saga waits this long for an operator
    outbox_retention_days: float = 7.0  # published outbox rows are deleted after this
    media_unattached_hours: float = 24.0  # uploads never attached are deleted after this
    # OWASP's Password Storage Cheat Sheet: Argon2id, 19 MiB, 2 passes, 1 lane (its minimum).
    argon2_time_cost: int = 2
    argon2_memory_cost: int = 19456
    argon2_parallelism: int = 1
    max_json_bytes: int = 64 * 1024
    feed_size: int = 800
    feed_active_days: int = 14
    feed_pull_threshold: int = 10_000
    fanout_page_size: int = 1000
    read_wait_ms: int = 500
    queue_prefix: str = ""
    projection_chunk: int = 50
    relay_linger_ms: float = 5.0
    saga_timer_max_delay_ms: int = 10_000
    relay_max_backoff_seconds: float = 10.0
    media_max_bytes: int = 5 * 1024 * 1024
    media_quota_bytes: int = 50 * 1024 * 1024
    moderation_banned_words: tuple[str, ...] = ("spamword", "scamlink")
    moderation_latency_ms: int = 0
    moderation_failure_rate: float = 0.0
    log_json: bool = True
    bench_baseline: bool = False
    # A failed message: tried again this many times, unless a dependency is down (then
    # without end), with a backoff from the minimum doubling to the maximum.
    message_max_retries: int = 50
    message_min_backoff_ms: int = 100
    message_max_backoff_ms: int = 30_000
    # The HTTP edge (issue 28): read limits, proxies, links, operations endpoints.
    rate_limit_account_reads: str = "1200/minute"  # reads with a valid token, per account
    metrics_token: str = field(default="", repr=False)  # /metrics wants this bearer token
    metrics_port: int = 0  # /metrics is served on this port only (and nothing else is)
    ready_check_seconds: float = 5.0  # /readyz asks the servers at most once in this
    metrics_cache_seconds: float = 15.0  # /metrics counts sagas and the outbox once in this
    trusted_proxies: int = 0  # reverse proxies in front, whose X-Forwarded-For is believed
    public_base_url: str = ""  # https://feed.example: Link headers' base (relative if unset)
    # Secrets, sessions and consistency tokens (issue 28; docs/configuration.md).
    consistency_token_max_age_seconds: int = 3600  # after this a token is ignored
    accept_legacy_signatures: bool = True  # verify what SECRET_KEY itself signed (upgrades)
    admin_session_max_seconds: int = 8 * 3600  # an operator's web session, whatever happens
    admin_session_idle_seconds: int = 30 * 60  # an operator's web session without a request
    # Overload (issue 29): hashing slots, refresh tokens, admission control.
    hash_cpu_share: float = 0.25  # of the machine's cores, for password hashes at once
    hash_wait_ms: int = 10  # a login waits this long for a hashing slot, then gets 503
    refresh_token_ttl_seconds: int = 60 * 24 * 3600  # each refresh token, from its issue
    admission_max_concurrency: int = 16  # requests a worker runs at once, at most (0: no bound)
    admission_min_concurrency: int = 4  # the adaptive bound never falls below this
    admission_queue_ms: int = 10  # a request that cannot start within this gets 503
    admission_target_lag_ms: int = 0  # a loop this late all through 100 ms sheds (0: fixed)
    edge_port: int = 0  # the launcher puts HAProxy here, in front of the API (0: no edge)
    edge_max_concurrency: int = 0  # requests the edge lets into the API at once (0: 8 a worker)
    edge_queue_ms: int = 20  # a request the edge cannot pass on within this gets 503

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read the settings from ``env`` (``os.environ`` by default)."""
        env = dict(os.environ if env is None else env)
        defaults = cls()
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            redis_url=env.get("REDIS_URL") or None,
            redis_cluster_nodes=tuple(
                node.strip()
                for node in env.get("REDIS_CLUSTER_NODES", "").split(",")
                if node.strip()
            ),
            redis_read_from_replicas=_bool(env, "REDIS_READ_FROM_REPLICAS", False),
            redis_held_connections=_bool(env, "REDIS_HELD_CONNECTIONS", True),
            broker_url=env.get("BROKER_URL") or None,
            secret_key=env.get("SECRET_KEY") or _persistent_secret(env),
            port=_int(env, "PORT", defaults.port),
            data_dir=Path(env.get("FEED_DATA_DIR") or DEFAULT_DATA_DIR),
            token_ttl_seconds=_int(env, "TOKEN_TTL_SECONDS", defaults.token_ttl_seconds),
            idempotency_ttl_seconds=_int(
                env, "IDEMPOTENCY_TTL_SECONDS", defaults.idempotency_ttl_seconds
            ),
            rate_limit_sessions=env.get("RATE_LIMIT_SESSIONS") or defaults.rate_limit_sessions,
            rate_limit_commands=env.get("RATE_LIMIT_COMMANDS") or defaults.rate_limit_commands,
            rate_limit_handle=env.get("RATE_LIMIT_HANDLE") or defaults.rate_limit_handle,
            rate_limit_handle_address=env.get("RATE_LIMIT_HANDLE_ADDRESS")
            or defaults.rate_limit_handle_address,
            account_status_cache_seconds=float(
                env.get("ACCOUNT_STATUS_CACHE_SECONDS") or defaults.account_status_cache_seconds
            ),
            request_timeout_seconds=float(
                env.get("REQUEST_TIMEOUT_SECONDS") or defaults.request_timeout_seconds
            ),
            behind_tls=_bool(env, "BEHIND_TLS", False),
            miss_seconds=float(env.get("MISS_SECONDS") or defaults.miss_seconds),
            rate_limit_anonymous_reads=env.get("RATE_LIMIT_ANONYMOUS_READS")
            or defaults.rate_limit_anonymous_reads,
            rate_limit_signups=env.get("RATE_LIMIT_SIGNUPS") or defaults.rate_limit_signups,
            media_unattached_hours=float(
                env.get("MEDIA_UNATTACHED_HOURS") or defaults.media_unattached_hours
            ),
            outbox_retention_days=float(
                env.get("OUTBOX_RETENTION_DAYS") or defaults.outbox_retention_days
            ),
            saga_stuck_visible_seconds=float(
                env.get("SAGA_STUCK_VISIBLE_SECONDS") or defaults.saga_stuck_visible_seconds
            ),
            consistency_token_ttl_seconds=_int(
                env, "CONSISTENCY_TOKEN_TTL_SECONDS", defaults.consistency_token_ttl_seconds
            ),
            rate_limits_enabled=_bool(env, "RATE_LIMITS_ENABLED", True),
            argon2_time_cost=_int(env, "ARGON2_TIME_COST", defaults.argon2_time_cost),
            argon2_memory_cost=_int(env, "ARGON2_MEMORY_COST", defaults.argon2_memory_cost),
            argon2_parallelism=_int(env, "ARGON2_PARALLELISM", defaults.argon2_parallelism),
            log_json=_bool(env, "LOG_JSON", True),
            bench_baseline=_bool(env, "BENCH_BASELINE", False),
            feed_size=_int(env, "FEED_SIZE", defaults.feed_size),
            feed_active_days=_int(env, "FEED_ACTIVE_DAYS", defaults.feed_active_days),
            feed_pull_threshold=_int(env, "FEED_PULL_THRESHOLD", defaults.feed_pull_threshold),
            fanout_page_size=_int(env, "FANOUT_PAGE_SIZE", defaults.fanout_page_size),
            read_wait_ms=_int(env, "READ_WAIT_MS", defaults.read_wait_ms),
            queue_prefix=env.get("FEED_QUEUE_PREFIX", ""),
            projection_chunk=max(1, _int(env, "PROJECTION_CHUNK", defaults.projection_chunk)),
            relay_linger_ms=_float(env, "RELAY_LINGER_MS", defaults.relay_linger_ms),
            saga_timer_max_delay_ms=_int(
                env, "SAGA_TIMER_MAX_DELAY_MS", defaults.saga_timer_max_delay_ms
            ),
            relay_max_backoff_seconds=_float(
                env, "RELAY_MAX_BACKOFF_SECONDS", defaults.relay_max_backoff_seconds
            ),
            media_quota_bytes=_int(env, "MEDIA_QUOTA_BYTES", defaults.media_quota_bytes),
            moderation_banned_words=tuple(
                w.strip().lower()
                for w in env.get(
                    "MODERATION_BANNED_WORDS", ",".join(defaults.moderation_banned_words)
                ).split(",")
                if w.strip()
            ),
            moderation_latency_ms=_int(env, "MODERATION_LATENCY_MS", 0),
            moderation_failure_rate=_float(env, "MODERATION_FAILURE_RATE", 0.0),
            message_max_retries=_int(env, "MESSAGE_MAX_RETRIES", defaults.message_max_retries),
            message_min_backoff_ms=_int(
                env, "MESSAGE_MIN_BACKOFF_MS", defaults.message_min_backoff_ms
            ),
            message_max_backoff_ms=_int(
                env, "MESSAGE_MAX_BACKOFF_MS", defaults.message_max_backoff_ms
            ),
            rate_limit_account_reads=env.get("RATE_LIMIT_ACCOUNT_READS")
            or defaults.rate_limit_account_reads,
            metrics_token=env.get("METRICS_TOKEN", ""),
            metrics_port=_int(env, "METRICS_PORT", defaults.metrics_port),
            ready_check_seconds=_float(env, "READY_CHECK_SECONDS", defaults.ready_check_seconds),
            metrics_cache_seconds=_float(
                env, "METRICS_CACHE_SECONDS", defaults.metrics_cache_seconds
            ),
            trusted_proxies=_int(env, "TRUSTED_PROXIES", defaults.trusted_proxies),
            public_base_url=env.get("PUBLIC_BASE_URL", "").strip().rstrip("/"),
            consistency_token_max_age_seconds=_int(
                env, "CONSISTENCY_TOKEN_MAX_AGE_SECONDS", defaults.consistency_token_max_age_seconds
            ),
            accept_legacy_signatures=_bool(env, "ACCEPT_LEGACY_SIGNATURES", True),
            admin_session_max_seconds=_int(
                env, "ADMIN_SESSION_MAX_SECONDS", defaults.admin_session_max_seconds
            ),
            admin_session_idle_seconds=_int(
                env, "ADMIN_SESSION_IDLE_SECONDS", defaults.admin_session_idle_seconds
            ),
            hash_cpu_share=_float(env, "HASH_CPU_SHARE", defaults.hash_cpu_share),
            hash_wait_ms=_int(env, "HASH_WAIT_MS", defaults.hash_wait_ms),
            refresh_token_ttl_seconds=_int(
                env, "REFRESH_TOKEN_TTL_SECONDS", defaults.refresh_token_ttl_seconds
            ),
            admission_max_concurrency=_int(
                env, "ADMISSION_MAX_CONCURRENCY", defaults.admission_max_concurrency
            ),
            admission_min_concurrency=_int(
                env, "ADMISSION_MIN_CONCURRENCY", defaults.admission_min_concurrency
            ),
            admission_queue_ms=_int(env, "ADMISSION_QUEUE_MS", defaults.admission_queue_ms),
            admission_target_lag_ms=_int(
                env, "ADMISSION_TARGET_LAG_MS", defaults.admission_target_lag_ms
            ),
            edge_port=_int(env, "EDGE_PORT", defaults.edge_port),
            edge_max_concurrency=_int(env, "EDGE_MAX_CONCURRENCY", defaults.edge_max_concurrency),
            edge_queue_ms=_int(env, "EDGE_QUEUE_MS", defaults.edge_queue_ms),
        )

    def __post_init__(self) -> None:
        if len(self.secret_key.encode()) < MIN_SECRET_KEY_BYTES:
            raise ValueError(
                f"SECRET_KEY must be at least {MIN_SECRET_KEY_BYTES} bytes long (a random "
                "string: python3 -c 'import secrets; print(secrets.token_urlsafe(48))')."
            )
        if not 0 <= self.hash_wait_ms <= MAX_HASH_WAIT_MS:
            # A login that queues for long is the storm this bound exists to stop.
            raise ValueError(f"HASH_WAIT_MS must be between 0 and {MAX_HASH_WAIT_MS}.")
        if self.hash_cpu_share <= 0:
            raise ValueError("HASH_CPU_SHARE must be above 0 (a share of the cores).")
        if self.edge_queue_ms < 1:  # HAProxy would wait its connect timeout (2 s) instead
            raise ValueError("EDGE_QUEUE_MS must be at least 1.")

    def signing_key(self, purpose: str) -> str:
        """The key that signs ``purpose``'s tokens, derived from ``SECRET_KEY``."""
        return derive_key(self.secret_key, purpose)

    @property
    def legacy_keys(self) -> tuple[str, ...]:
        """Keys that still verify (never sign): ``SECRET_KEY`` itself, which signed everything
        before keys were derived, until ``ACCEPT_LEGACY_SIGNATURES`` is turned off."""
        return (self.secret_key,) if self.accept_legacy_signatures else ()

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some settings replaced (tests use this)."""
        return replace(self, **changes)

    @property
    def feed_ttl_seconds(self) -> int:
        """How long a feed lives without an authenticated request from its owner."""
        return self.feed_active_days * 24 * 3600

    @property
    def limiter_storage_uri(self) -> str:
        """Where Flask-Limiter keeps its counters (Redis; memory when no Redis is set)."""
        if self.redis_cluster_nodes:
            return "redis+cluster://" + ",".join(self.redis_cluster_nodes)
        return limiter_storage_url(self.redis_url) if self.redis_url else "memory://"

    @property
    def has_redis(self) -> bool:
        """True when a Redis server or cluster is given (else the launcher embeds one)."""
        return bool(self.redis_url or self.redis_cluster_nodes)

    @property
    def is_configured(self) -> bool:
        """True when every server is given; otherwise the launcher embeds what is missing."""
        return bool(self.database_url and self.has_redis and self.broker_url)


def _persistent_secret(env: dict[str, str]) -> str:
    """Without SECRET_KEY, keep one under the data directory so tokens survive restarts."""
    data_dir = Path(env.get("FEED_DATA_DIR") or DEFAULT_DATA_DIR)
    path = data_dir / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key)
        return key
    except FileExistsError:
        return path.read_text().strip()
    except OSError:
        return secrets.token_urlsafe(32)
