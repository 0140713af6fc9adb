"""Password hashing (Argon2id) and bearer tokens (JWT, HS256 only)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
from feed.hash_slots import HashSlots

TOKEN_ALGORITHM = "HS256"
TOKEN_ISSUER = "feed"

T = TypeVar("T")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the account id and whether it holds the admin role."""

    account_id: int
    is_admin: bool
    # The login the token belongs to (None: a token from before logins were kept) and when
    # the token was issued: what revocation is checked against.
    session_id: str | None = None
    issued_at: int = field(default=0, compare=False)


def off_the_event_loop(function: Callable[..., T], *args: Any) -> T:
    """Run CPU-heavy C code on a real thread when this process runs on gevent (the API's
    gunicorn workers do), so one login's Argon2 does not stall every other request of the
    worker; argon2-cffi releases the GIL while it works. Elsewhere, a plain call."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        import gevent

        return gevent.get_hub().threadpool.apply(function, args)
    return function(*args)


@dataclass(frozen=True)
class Checked:
    """A password check: whether it matched, and the hash to store instead when the stored
    one was made with other parameters than today's (``None``: keep it)."""

    ok: bool
    rehashed: str | None = None


class Passwords:
    """Argon2id hashing with the configured cost, each hash in one of the machine's hashing
    slots (``feed.hash_slots``); verifies in constant work for unknown handles."""

    def __init__(
        self, *, time_cost: int, memory_cost: int, parallelism: int, slots: HashSlots
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism, type=Type.ID
        )
        self.slots = slots
        # Verified against when the handle is unknown, so a miss costs as much as a hit.
        self._decoy = self._hasher.hash("decoy password for unknown handles")

    def hash(self, password: str) -> str:
        """A new Argon2id hash of ``password``; ``HashingBusy`` when no slot is free."""
        with self.slots.slot():
            return off_the_event_loop(self._hasher.hash, password)

    def check(self, password_hash: str | None, password: str) -> Checked:
        """Whether ``password`` matches (the same work when there is no hash), and its new
        hash when the parameters changed since it was made: one slot for both."""
        with self.slots.slot():
            try:
                ok = off_the_event_loop(
                    self._hasher.verify, password_hash or self._decoy, password
                ) and bool(password_hash)
            except (VerificationError, InvalidHashError):
                return Checked(False)
            if ok and self._hasher.check_needs_rehash(password_hash):
                return Checked(True, off_the_event_loop(self._hasher.hash, password))
            return Checked(ok)


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
        if principal.session_id is not None:
            claims["sid"] = principal.session_id
        token = jwt.encode(claims, self._key, algorithm=TOKEN_ALGORITHM)
        return token, datetime.fromtimestamp(expires, tz=UTC)

    def replayable(self, token: str) -> dict[str, Any]:
        """What ``reissue`` needs to make this same token again (nothing secret)."""
        claims = jwt.decode(token, self._key, algorithms=[TOKEN_ALGORITHM], issuer=TOKEN_ISSUER)
        kept = {"sub": claims["sub"], "adm": claims["adm"], "iat": claims["iat"]}
        return {**kept, "sid": claims["sid"]} if "sid" in claims else kept

    def reissue(self, replayable: dict[str, Any]) -> str:
        """The token ``replayable`` came from: same claims, same key, so the same string."""
        principal = Principal(
            int(replayable["sub"]), bool(replayable["adm"]), replayable.get("sid")
        )
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
            sid = claims.get("sid")
            principal = Principal(
                account_id=int(claims["sub"]),
                is_admin=bool(claims.get("adm")),
                session_id=sid if isinstance(sid, str) else None,
                issued_at=int(claims["iat"]),
            )
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


@dataclass(frozen=True)
class Standing:
    """What the API knows of an account's tokens: whether the account is active, the logins
    ended lately (their ids), and the time before which tokens without a login no longer
    count (a password change; epoch seconds, 0 for none)."""

    active: bool
    ended: frozenset[str] = frozenset()
    tokens_valid_after: float = 0.0


class ActiveAccounts:
    """Whether a token still opens the API: only while its account is active (not disabled by
    a deletion in progress, not deleted) and its login has not ended (a logout, a password
    change, a refresh token reused). Read from PostgreSQL and remembered for ``ttl`` seconds
    in this process, so a token dies within that, at one query per account and period, not
    one per request. While PostgreSQL does not answer (refused, or no answer in
    ``STATUS_WAIT_SECONDS``), the last standing known stands (an account never seen counts as
    active: its token is valid and signed), so reads served from Redis go on."""

    def __init__(self, engine: Any, ttl: float, access_ttl: float = 24 * 3600) -> None:
        self._engine = engine
        self._standing: Expiring[int, Standing] = Expiring(ttl)
        # A login ended longer ago than an access token lives has no token left to refuse.
        self._access_ttl = access_ttl

    def remember(self, account_id: int) -> None:
        """The account was seen active a moment ago (it just logged in)."""
        if self._standing.get(account_id) is None:
            self._standing.put(account_id, Standing(active=True))

    def forget(self, account_id: int) -> None:
        """Ask PostgreSQL next time: this process just ended a login of the account."""
        self._standing.drop(account_id)

    def refusal(self, principal: Principal) -> str | None:
        """Why ``principal``'s token no longer opens the API, or ``None`` when it does."""
        standing = self.standing(principal.account_id)
        if not standing.active:
            return "This account is no longer active."
        if principal.session_id is not None:
            if principal.session_id in standing.ended:
                return "This login has ended; log in again."
        elif principal.issued_at < standing.tokens_valid_after:
            return "This token has been revoked; log in again."
        return None

    def standing(self, account_id: int) -> Standing:
        known = self._standing.get(account_id)
        if known is not None:
            return known
        row = None
        with at_most(STATUS_WAIT_SECONDS):
            try:
                with self._engine.connect() as conn:
                    row = conn.execute(
                        ACCOUNT_STANDING, {"id": account_id, "window": self._access_ttl}
                    ).first()
                    if row is None:
                        row = ("deleted", None, [])
            except OperationalError:
                pass
        if row is None:
            last = self._standing.get(account_id, expired_too=True)
            return Standing(active=True) if last is None else last
        status, valid_after, ended = row
        standing = Standing(
            active=status == "active",
            ended=frozenset(ended or ()),
            tokens_valid_after=float(valid_after or 0),
        )
        self._standing.put(account_id, standing)
        return standing


STATUS_WAIT_SECONDS = 1.0


ACCOUNT_STANDING = text(
    """
    SELECT a.status, extract(epoch FROM a.tokens_valid_after),
           ARRAY(SELECT s.id FROM account_sessions s
                 WHERE s.account_id = a.id
                   AND s.revoked_at > now() - make_interval(secs => :window))
    FROM accounts a WHERE a.id = :id
    """
)
