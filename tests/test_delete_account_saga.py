"""Deleting an account: every trace goes; a failure before the point of no return restores
logins; after it the saga retries, or waits as failed for an operator."""

from __future__ import annotations

import pytest

from sagas.services import inject_fault
from tests.conftest import fetch_all
from tests.test_promote_saga import settle
from tests.test_publish_saga import upload


@pytest.fixture
def leaving(app, client, make_account, project_all):
    """Ada posts, votes, follows and is followed, has media and a wallet; bob and carol read."""
    ada, bob, carol, admin = (make_account(h) for h in ("ada_l", "bob_b", "carol", "the_admin"))
    app.test_cli_runner().invoke(args=["accounts", "make-admin", "the_admin"])
    for account in (ada, bob, carol):
        client.get("/api/v1/timelines/home", headers=account.auth)
    client.post(f"/api/v1/accounts/{ada.id}/follow", headers=bob.auth)
    client.post(f"/api/v1/accounts/{carol.id}/follow", headers=ada.auth)
    ada_posts = [
        client.post("/api/v1/posts", json={"body": f"ada {i}"}, headers=ada.auth).get_json()["id"]
        for i in range(3)
    ]
    carol_post = client.post(
        "/api/v1/posts", json={"body": "carol"}, headers=carol.auth
    ).get_json()["id"]
    client.put(f"/api/v1/posts/{carol_post}/vote", json={"value": 1}, headers=ada.auth)
    client.put(f"/api/v1/posts/{ada_posts[0]}/vote", json={"value": 1}, headers=bob.auth)
    media_id = upload(client, ada).get_json()["id"]
    client.post(f"/api/v1/admin/wallets/{ada.id}/credit", json={"credits": 5}, headers=admin.auth)
    project_all()
    assert len(client.get("/api/v1/timelines/home", headers=bob.auth).get_json()["items"]) == 3
    return {
        "ada": ada,
        "bob": bob,
        "carol": carol,
        "admin": admin,
        "ada_posts": ada_posts,
        "carol_post": carol_post,
        "media_id": media_id,
    }


def delete_me(client, account):
    r = client.delete("/api/v1/accounts/me", headers=account.auth)
    assert r.status_code == 202 and r.get_json()["status"] == "running"
    return r.get_json()["saga_id"]


def test_deleting_an_account_removes_every_trace(app, client, engine, leaving):
    ada, bob, carol = leaving["ada"], leaving["bob"], leaving["carol"]
    saga_id = delete_me(client, ada)
    settle(app)

    saga = fetch_all(engine, "SELECT status FROM sagas WHERE id = :id", id=saga_id)[0]
    assert saga["status"] == "completed"
    assert client.get(f"/api/v1/accounts/{ada.id}").status_code == 404
    assert (
        client.post(
            "/api/v1/sessions", json={"handle": "ada_l", "password": ada.password}
        ).status_code
        == 401
    )
    assert client.get("/api/v1/timelines/home", headers=bob.auth).get_json()["items"] == []
    for post_id in leaving["ada_posts"]:
        assert client.get(f"/api/v1/posts/{post_id}").status_code == 404
    carol_post = client.get(f"/api/v1/posts/{leaving['carol_post']}").get_json()
    assert carol_post["up"] == 0  # ada's vote is gone and the count corrected
    carol_seen = client.get(f"/api/v1/accounts/{carol.id}").get_json()
    bob_seen = client.get(f"/api/v1/accounts/{bob.id}").get_json()
    assert carol_seen["followers_count"] == 0 and bob_seen["following_count"] == 0
    assert fetch_all(engine, "SELECT * FROM follows") == []
    assert fetch_all(engine, "SELECT status FROM media") == [{"status": "deleted"}]
    assert client.get(f"/api/v1/media/{leaving['media_id']}").status_code == 404
    assert fetch_all(engine, "SELECT status FROM wallets") == [{"status": "closed"}]
    account = fetch_all(
        engine, "SELECT handle, status, password_hash FROM accounts WHERE id = :id", id=int(ada.id)
    )[0]
    assert account == {"handle": f"deleted-{ada.id}", "status": "deleted", "password_hash": ""}
    # the handle is free again
    again = client.post("/api/v1/accounts", json={"handle": "ada_l", "password": "12345678"})
    assert again.status_code == 201
    # and a rebuild from PostgreSQL agrees
    app.extensions["feed"].redis.flushdb()
    assert client.get("/api/v1/timelines/home", headers=bob.auth).get_json()["items"] == []


def test_a_handle_taken_in_advance_cannot_block_a_deletion(app, client, engine, leaving):
    """Ids are public: anyone may register the handle a deletion would rename the account to.
    The deletion's handle is one no registration can take."""
    ada = leaving["ada"]
    squat = client.post(
        "/api/v1/accounts", json={"handle": f"deleted_{ada.id}"[:30], "password": "12345678"}
    )
    assert squat.status_code == 201
    saga_id = delete_me(client, ada)
    settle(app)

    saga = fetch_all(engine, "SELECT status FROM sagas WHERE id = :id", id=saga_id)[0]
    assert saga["status"] == "completed"
    (account,) = fetch_all(
        engine, "SELECT status, password_hash FROM accounts WHERE id = :id", id=int(ada.id)
    )
    assert account == {"status": "deleted", "password_hash": ""}
    taken = client.post(
        "/api/v1/accounts", json={"handle": f"deleted-{ada.id}", "password": "12345678"}
    )
    assert taken.status_code == 422  # not a handle anyone can register


def test_a_failure_before_the_point_of_no_return_restores_logins(app, client, engine, leaving):
    ada = leaving["ada"]
    with engine.begin() as conn:
        inject_fault(conn, "feed", "purge_posts", "permanent", 1)
    saga_id = delete_me(client, ada)
    settle(app)
    saga = client.get(f"/api/v1/sagas/{saga_id}", headers=ada.auth).get_json()
    assert saga["status"] == "compensated"
    login = client.post("/api/v1/sessions", json={"handle": "ada_l", "password": ada.password})
    assert login.status_code == 200
    assert (
        len(client.get("/api/v1/timelines/home", headers=leaving["bob"].auth).get_json()["items"])
        == 3
    )


def test_after_the_point_of_no_return_it_waits_for_an_operator(app, client, engine, leaving):
    ada, admin = leaving["ada"], leaving["admin"]
    with engine.begin() as conn:
        inject_fault(conn, "billing", "close_wallet", "permanent", 1)
    saga_id = delete_me(client, ada)
    settle(app)
    shown = client.get(f"/api/v1/admin/sagas/{saga_id}", headers=admin.auth).get_json()
    assert shown["status"] == "failed" and shown["current_step"] == "close_wallet"
    assert (
        client.get("/api/v1/timelines/home", headers=leaving["bob"].auth).get_json()["items"] == []
    )

    client.post(f"/api/v1/admin/sagas/{saga_id}/retry", headers=admin.auth)
    settle(app)
    assert (
        fetch_all(engine, "SELECT status FROM sagas WHERE id = :id", id=saga_id)[0]["status"]
        == "completed"
    )
    assert client.get(f"/api/v1/accounts/{ada.id}").status_code == 404


def test_asking_twice_starts_one_deletion(client, engine, leaving):
    ada = leaving["ada"]
    first, second = delete_me(client, ada), delete_me(client, ada)
    assert first == second
    assert len(fetch_all(engine, "SELECT * FROM sagas WHERE type = 'delete_account'")) == 1


def test_a_closed_wallet_takes_no_more_credits(app, client, engine, leaving):
    import pytest as _pytest

    from feed.errors import InvalidInput
    from sagas.services import billing

    delete_me(client, leaving["ada"])
    settle(app)
    with engine.begin() as conn, _pytest.raises(InvalidInput):
        billing.credit(conn, int(leaving["ada"].id), 10, by=int(leaving["admin"].id))
    r = client.post(
        f"/api/v1/admin/wallets/{leaving['ada'].id}/credit",
        json={"credits": 10},
        headers=leaving["admin"].auth,
    )
    assert r.status_code == 404
