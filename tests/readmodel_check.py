"""The check that ends every fault run: what clients read equals what PostgreSQL says."""

from __future__ import annotations

import uuid

from sqlalchemy import text


def mismatches(app, accounts) -> list[str]:
    """Where what clients read differs from PostgreSQL: every feed (every post once, newest
    first) and every account's counters."""
    client, svc = app.test_client(), app.extensions["feed"]
    found = []
    with svc.engine.connect() as conn:
        for me in accounts:
            want = [str(i) for i in svc.store.sources.home(conn, int(me["id"]), 40)]
            page = client.get("/api/v1/timelines/home?limit=40", headers=me["auth"]).get_json()
            got = [p["id"] for p in page["items"]]
            if got != want:
                found.append(f"feed of {me['id']}: {got} != {want}")
            row = conn.execute(
                text(
                    "SELECT followers_count, following_count, posts_count FROM accounts "
                    "WHERE id = :id"
                ),
                {"id": int(me["id"])},
            ).one()
            profile = client.get(f"/api/v1/accounts/{me['id']}").get_json()
            read = (profile["followers_count"], profile["following_count"], profile["posts_count"])
            if read != tuple(row):
                found.append(f"counts of {me['id']}: {read} != {tuple(row)}")
    return found


def register(client, n: int) -> list[dict]:
    """``n`` new accounts, logged in: each an id and the headers of its token."""
    accounts = []
    for i in range(n):
        handle = f"c{i}_{uuid.uuid4().hex[:6]}"
        client.post("/api/v1/accounts", json={"handle": handle, "password": "12345678"})
        session = client.post("/api/v1/sessions", json={"handle": handle, "password": "12345678"})
        body = session.get_json()
        accounts.append(
            {"id": body["account"]["id"], "auth": {"Authorization": f"Bearer {body['token']}"}}
        )
    return accounts
