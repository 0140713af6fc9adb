"""Password hashing (Argon2id) and bearer tokens (JWT, HS256 only)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import jwt
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from feed.deadline import at_most
from feed.errors import Unauthenticated
from feed.expiring import Expiring

TOKEN_ALGORITHM = "HS256"
TOKEN_ISSUER = "feed"

T = TypeVar("T")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the account id and whether it holds the admin role."""

    account_id: int
    is_admin: bool


def off_the_event_loop(function: Callable[..., T], *args: Any) -> T:
    """Run CPU-heavy C code on a real thread when this process runs on gevent (the API's
    gunicorn workers do), so one login's Argon2 does not stall every other request of the
    worker; argon2-cffi releases the GIL while it works. Elsewhere, a plain call."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        import gevent

        return gevent.get_hub().threadpool.apply(function, args)
    return function(*args)


class Passwords:
    """Argon2id hashing with the configured cost; verifies in constant work for unknown handles."""

    def __init__(self, *, time_cost: int, memory_cost: int, parallelism: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism, type=Type.ID
        )
        # Verified against when the handle is unknown, so a miss costs as much as a hit.
        self._decoy = self._hasher.hash("decoy password for unknown handles")

    def hash(self, password: str) -> str:
        """A new Argon2id hash of ``password``."""
        return off_the_event_loop(self._hasher.hash, password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; spends the same work when there is no hash."""
        try:
            return off_the_event_loop(
                self._hasher.verify, password_hash or self._decoy, password
            ) and bool(password_hash)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(password_hash)


class Tokens:
    """Signed, expiring bearer tokens. The algorithm is pinned: ``none`` and others are refused.

    A token that verified is remembered (up to ``VERIFIED_CACHE_SIZE``, with its expiry) so a
    client's next requests skip the signature check; expiry is still checked on every use.
    """

    VERIFIED_CACHE_SIZE = 10_000

    def __init__(
        self, secret_key: str, ttl_seconds: int, legacy_keys: tuple[str, ...] = ()
    ) -> None:
        self._key = secret_key
        # Tokens signed before this key was derived stay valid until they expire.
        self._verifying_keys = (secret_key, *legacy_keys)
        self.ttl_seconds = ttl_seconds
        self._verified: dict[str, tuple[Principal, int]] = {}
        self._verified_lock = threading.Lock()

    def issue(self, principal: Principal, *, now: float | None = None) -> tuple[str, datetime]:
        """A token for ``principal`` and the time it expires."""
        issued = int(now if now is not None else time.time())
        expires = issued + self.ttl_seconds
        claims = {
            "sub": str(principal.account_id),
            "adm": principal.is_admin,
            "iat": issued,
            "exp": expires,
            "iss": TOKEN_ISSUER,
        }
        token = jwt.encode(claims, self._key, algorithm=TOKEN_ALGORITHM)
        return token, datetime.fromtimestamp(expires, tz=UTC)

    def replayable(self, token: str) -> dict[str, Any]:
        """What ``reissue`` needs to make this same token again (nothing secret)."""
        claims = jwt.decode(token, self._key, algorithms=[TOKEN_ALGORITHM], issuer=TOKEN_ISSUER)
        return {"sub": claims["sub"], "adm": claims["adm"], "iat": claims["iat"]}

    def reissue(self, replayable: dict[str, Any]) -> str:
        """The token ``replayable`` came from: same claims, same key, so the same string."""
        principal = Principal(int(replayable["sub"]), bool(replayable["adm"]))
        return self.issue(principal, now=replayable["iat"])[0]

    def verify(self, token: str) -> Principal:
        """The principal a valid token names; ``Unauthenticated`` for anything else."""
        remembered = self._verified.get(token)
        if remembered is not None and time.time() < remembered[1]:
            return remembered[0]
        principal, expires = self._verify_signed(token)
        with self._verified_lock:
            if len(self._verified) >= self.VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]  # the oldest remembered
            self._verified[token] = (principal, expires)
        return principal

    def _verify_signed(self, token: str) -> tuple[Principal, int]:
        try:
            claims = self._decode(token)
            principal = Principal(account_id=int(claims["sub"]), is_admin=bool(claims.get("adm")))
            return principal, int(claims["exp"])
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("The token has expired; log in again.") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise Unauthenticated("The token is not valid.") from None

    def _decode(self, token: str) -> dict[str, Any]:
        for key in self._verifying_keys[:-1]:
            try:
                return self._decode_with(token, key)
            except jwt.InvalidSignatureError:
                continue
        return self._decode_with(token, self._verifying_keys[-1])

    @staticmethod
    def _decode_with(token: str, key: str) -> dict[str, Any]:
        return jwt.decode(
            token,
            key,
            algorithms=[TOKEN_ALGORITHM],
            issuer=TOKEN_ISSUER,
            options={"require": ["sub", "exp", "iat", "iss"]},
        )


class ActiveAccounts:
    """Whether an account's tokens still open the API: only while the account is active (not
    disabled by a deletion in progress, not deleted). Read from PostgreSQL and remembered for
    ``ttl`` seconds in this process, so a token dies with its account within that, at one
    query per account and period. While PostgreSQL does not answer (refused, or no answer in
    ``STATUS_WAIT_SECONDS``), the last status known stands (an account never seen counts as
    active: its token is valid and signed), so reads served from Redis go on."""

    def __init__(self, engine: Any, ttl: float) -> None:
        self._engine = engine
        self._active: Expiring[int, bool] = Expiring(ttl)

    def remember(self, account_id: int) -> None:
        """The account was seen active a moment ago (it just logged in)."""
        self._active.put(account_id, True)

    def is_active(self, account_id: int) -> bool:
        active = self._active.get(account_id)
        if active is not None:
            return active
        status = UNKNOWN
        with at_most(STATUS_WAIT_SECONDS):
            try:
                with self._engine.connect() as conn:
                    status = conn.execute(ACCOUNT_STATUS, {"id": account_id}).scalar_one_or_none()
            except OperationalError:
                pass
        if status is UNKNOWN:
            last = self._active.get(account_id, expired_too=True)
            return True if last is None else last
        self._active.put(account_id, status == "active")
        return status == "active"


UNKNOWN = object()
STATUS_WAIT_SECONDS = 1.0


ACCOUNT_STATUS = text("SELECT status FROM accounts WHERE id = :id")
