"""Who may do what: no token, bad tokens, and a second account touching the first's objects."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from feed.auth import Principal, Tokens
from feed.errors import Unauthenticated
from tests.conftest import fetch_all
from tests.test_atomicity import snapshot

SECRET = "test-secret-key-that-is-long-enough-for-hs256"


@pytest.fixture
def world(client, make_account):
    ada, mallory = make_account("ada_l"), make_account("mallory")
    post_id = client.post("/api/v1/posts", json={"body": "mine"}, headers=ada.auth).get_json()["id"]
    return {"ada": ada, "mallory": mallory, "post_id": post_id}


def protected_requests(w):
    """Every command that needs a caller, as (method, path, json body)."""
    return [
        ("post", "/api/v1/posts", {"body": "hi"}),
        ("delete", f"/api/v1/posts/{w['post_id']}", None),
        ("put", f"/api/v1/posts/{w['post_id']}/vote", {"value": 1}),
        ("post", f"/api/v1/accounts/{w['ada'].id}/follow", None),
        ("delete", f"/api/v1/accounts/{w['ada'].id}/follow", None),
    ]


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def bad_tokens(w) -> dict[str, str]:
    ada_id = int(w["ada"].id)
    claims = {"sub": str(ada_id), "adm": True, "iat": int(time.time()), "iss": "feed"}
    valid = w["ada"].token
    header, payload, signature = valid.split(".")
    forged_payload = _b64({**claims, "exp": int(time.time()) + 3600})
    return {
        "expired": Tokens(SECRET, ttl_seconds=60).issue(
            Principal(ada_id, False), now=time.time() - 3600
        )[0],
        "tampered": f"{header}.{forged_payload}.{signature}",
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{forged_payload}.",
        "other key": jwt.encode({**claims, "exp": int(time.time()) + 3600}, "x" * 40, "HS256"),
        "HS512": jwt.encode({**claims, "exp": int(time.time()) + 3600}, SECRET, "HS512"),
        "no exp": jwt.encode(claims, SECRET, "HS256"),
        "other issuer": jwt.encode(
            {**claims, "iss": "evil", "exp": int(time.time()) + 3600}, SECRET, "HS256"
        ),
        "garbage": "not-a-token",
        "empty sub": jwt.encode(
            {**claims, "sub": "", "exp": int(time.time()) + 3600}, SECRET, "HS256"
        ),
    }


def test_every_command_needs_a_token(client, engine, world):
    before = snapshot(engine)
    for method, path, body in protected_requests(world):
        r = getattr(client, method)(path, json=body)
        assert r.status_code == 401, (method, path)
        assert r.mimetype == "application/problem+json"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert snapshot(engine) == before


@pytest.mark.parametrize(
    "kind",
    [
        "expired",
        "tampered",
        "alg none",
        "other key",
        "HS512",
        "no exp",
        "other issuer",
        "garbage",
        "empty sub",
    ],
)
def test_bad_tokens_are_refused(client, engine, world, kind):
    token = bad_tokens(world)[kind]
    before = snapshot(engine)
    for method, path, body in protected_requests(world):
        r = getattr(client, method)(path, json=body, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, (kind, method, path, r.get_json())
    assert snapshot(engine) == before


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer   ", "Token abc", "bearer"])
def test_malformed_authorization_headers_are_401(client, world, header):
    r = client.post("/api/v1/posts", json={"body": "x"}, headers={"Authorization": header})
    assert r.status_code == 401


def test_a_token_is_checked_before_the_body(client, world):
    r = client.post("/api/v1/posts", json={"nonsense": True})
    assert r.status_code == 401


def test_another_account_cannot_delete_my_post(client, engine, world):
    r = client.delete(f"/api/v1/posts/{world['post_id']}", headers=world["mallory"].auth)
    assert r.status_code == 403
    assert r.mimetype == "application/problem+json"
    assert fetch_all(engine, "SELECT status FROM posts")[0]["status"] == "published"


def test_my_vote_and_follow_act_only_as_me(client, engine, world):
    mallory = world["mallory"]
    client.put(f"/api/v1/posts/{world['post_id']}/vote", json={"value": -1}, headers=mallory.auth)
    client.post(f"/api/v1/accounts/{world['ada'].id}/follow", headers=mallory.auth)

    votes = fetch_all(engine, "SELECT account_id::text FROM votes")
    follows = fetch_all(engine, "SELECT follower_id::text FROM follows")
    assert votes == [{"account_id": mallory.id}]
    assert follows == [{"follower_id": mallory.id}]


def test_an_admin_claim_in_a_token_is_not_trusted_without_the_role(client, engine, world):
    """A token says adm=true, but the database says the account is no admin: 403."""
    mallory_id = int(world["mallory"].id)
    forged = Tokens(SECRET, 3600).issue(Principal(mallory_id, True))[0]
    r = client.delete(
        f"/api/v1/posts/{world['post_id']}", headers={"Authorization": f"Bearer {forged}"}
    )
    assert r.status_code == 403


def test_a_disabled_account_cannot_act_with_a_token_it_still_holds(client, engine, world):
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(
            text("UPDATE accounts SET status = 'disabled' WHERE id = :id"),
            {"id": int(world["ada"].id)},
        )
    r = client.post("/api/v1/posts", json={"body": "x"}, headers=world["ada"].auth)
    assert r.status_code == 401
    login = client.post(
        "/api/v1/sessions", json={"handle": "ada_l", "password": world["ada"].password}
    )
    assert login.status_code == 401


def test_a_token_for_an_account_that_does_not_exist_is_401(client, world):
    ghost = Tokens(SECRET, 3600).issue(Principal(424242, False))[0]
    r = client.post(
        "/api/v1/posts", json={"body": "x"}, headers={"Authorization": f"Bearer {ghost}"}
    )
    assert r.status_code == 401


def test_idempotency_keys_are_scoped_to_the_account(client, engine, world):
    """Mallory reusing ada's key neither sees ada's answer nor blocks her own request."""
    key = {"Idempotency-Key": "shared-key"}
    first = client.post(
        "/api/v1/posts", json={"body": "ada's"}, headers={**world["ada"].auth, **key}
    )
    second = client.post(
        "/api/v1/posts", json={"body": "mallory's"}, headers={**world["mallory"].auth, **key}
    )
    assert first.status_code == second.status_code == 201
    assert first.get_json()["id"] != second.get_json()["id"]
    assert second.get_json()["author"]["handle"] == "mallory"


def disable(engine, account) -> None:
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(
            text("UPDATE accounts SET status = 'disabled' WHERE id = :id"), {"id": int(account.id)}
        )


def test_an_admin_deletes_the_post_of_a_disabled_account(app, client, engine, world):
    admin_account = world["mallory"]
    app.test_cli_runner().invoke(args=["accounts", "make-admin", "mallory"])
    disable(engine, world["ada"])
    r = client.delete(f"/api/v1/posts/{world['post_id']}", headers=admin_account.auth)
    assert r.status_code == 204


def test_a_disabled_account_can_be_unfollowed_but_not_followed(client, engine, world, make_account):
    fan, late = world["mallory"], make_account()
    client.post(f"/api/v1/accounts/{world['ada'].id}/follow", headers=fan.auth)
    disable(engine, world["ada"])

    unfollow = client.delete(f"/api/v1/accounts/{world['ada'].id}/follow", headers=fan.auth)
    follow = client.post(f"/api/v1/accounts/{world['ada'].id}/follow", headers=late.auth)

    assert unfollow.status_code == 200 and unfollow.get_json() == {"following": False}
    assert follow.status_code == 404


def test_a_remembered_token_still_expires_and_a_tampered_one_is_not_remembered():
    """Verified tokens are remembered to skip the signature check, never past their expiry."""
    tokens = Tokens("a-secret-key-long-enough-for-hs256", ttl_seconds=1)
    token, _ = tokens.issue(Principal(7, False))
    assert tokens.verify(token) == Principal(7, False)
    assert tokens.verify(token) == Principal(7, False)  # from memory
    header, payload, signature = token.split(".")
    with pytest.raises(Unauthenticated):
        tokens.verify(f"{header}.{payload}.{signature[:-2]}AA")
    time.sleep(1.1)
    with pytest.raises(Unauthenticated):
        tokens.verify(token)


def test_remembered_tokens_are_bounded():
    tokens = Tokens("a-secret-key-long-enough-for-hs256", ttl_seconds=60)
    tokens.VERIFIED_CACHE_SIZE = 3
    issued = [tokens.issue(Principal(i, False))[0] for i in range(5)]
    for token in issued:
        tokens.verify(token)
    assert list(tokens._verified) == issued[2:]
