"""Commands racing each other on the real PostgreSQL: counts stay exact, uniqueness holds."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import fetch_all


def run_together(app, requests, workers: int = 25):
    """Send ``requests`` (callables taking a test client) at once; a barrier lines them up."""
    barrier = threading.Barrier(len(requests))

    def send(request):
        client = app.test_client()
        barrier.wait()
        return request(client)

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(send, requests))


def test_fifty_accounts_voting_at_once_count_exactly_fifty(app, client, engine, make_account):
    author = make_account()
    post_id = client.post("/api/v1/posts", json={"body": "vote!"}, headers=author.auth).get_json()[
        "id"
    ]
    voters = [make_account() for _ in range(50)]

    responses = run_together(
        app,
        [
            (
                lambda c, v=v: c.put(
                    f"/api/v1/posts/{post_id}/vote", json={"value": 1}, headers=v.auth
                )
            )
            for v in voters
        ],
    )

    assert [r.status_code for r in responses] == [200] * 50
    assert sorted(r.get_json()["up"] for r in responses) == list(range(1, 51))
    (post,) = fetch_all(engine, "SELECT up, down, votes_version FROM posts")
    assert (post["up"], post["down"], post["votes_version"]) == (50, 0, 50)
    assert len(fetch_all(engine, "SELECT * FROM votes")) == 50
    events = fetch_all(engine, "SELECT payload FROM outbox WHERE type = 'VoteCast'")
    assert sorted(e["payload"]["account_id"] for e in events) == sorted(v.id for v in voters)


def test_switching_votes_at_once_moves_them_exactly(app, client, engine, make_account):
    author = make_account()
    post_id = client.post("/api/v1/posts", json={"body": "vote!"}, headers=author.auth).get_json()[
        "id"
    ]
    voters = [make_account() for _ in range(20)]
    for v in voters:
        client.put(f"/api/v1/posts/{post_id}/vote", json={"value": 1}, headers=v.auth)

    run_together(
        app,
        [
            (
                lambda c, v=v: c.put(
                    f"/api/v1/posts/{post_id}/vote", json={"value": -1}, headers=v.auth
                )
            )
            for v in voters[:12]
        ],
    )

    (post,) = fetch_all(engine, "SELECT up, down FROM posts")
    assert (post["up"], post["down"]) == (8, 12)


def test_one_account_spamming_the_same_vote_counts_once(app, client, engine, make_account):
    author, voter = make_account(), make_account()
    post_id = client.post("/api/v1/posts", json={"body": "x"}, headers=author.auth).get_json()["id"]

    run_together(
        app,
        [
            (
                lambda c: c.put(
                    f"/api/v1/posts/{post_id}/vote", json={"value": 1}, headers=voter.auth
                )
            )
            for _ in range(20)
        ],
    )

    assert fetch_all(engine, "SELECT up FROM posts")[0]["up"] == 1
    assert len(fetch_all(engine, "SELECT * FROM outbox WHERE type = 'VoteCast'")) == 1


def test_one_account_changing_its_vote_at_once_leaves_counts_that_match_its_vote(
    app, client, engine, make_account
):
    """Each vote's change is counted from the vote it replaces, even when one account's votes
    on one post race each other (each must read the previous vote after the last one
    committed, not from a snapshot taken before it)."""
    author, voter = make_account(), make_account()
    for round_ in range(3):
        post_id = client.post(
            "/api/v1/posts", json={"body": f"flip {round_}"}, headers=author.auth
        ).get_json()["id"]

        responses = run_together(
            app,
            [
                (
                    lambda c, value=value, url=f"/api/v1/posts/{post_id}/vote": c.put(
                        url, json={"value": value}, headers=voter.auth
                    )
                )
                for value in [1, -1, 0, -1, 1] * 4
            ],
        )

        assert [r.status_code for r in responses] == [200] * 20
        (post,) = fetch_all(
            engine, "SELECT up, down, votes_version FROM posts WHERE id = :id", id=int(post_id)
        )
        held = fetch_all(engine, "SELECT value FROM votes WHERE post_id = :id", id=int(post_id))
        value = held[0]["value"] if held else 0
        assert (post["up"], post["down"]) == (int(value == 1), int(value == -1))
        events = [
            e["payload"]
            for e in fetch_all(
                engine,
                "SELECT payload FROM outbox WHERE type = 'VoteCast' "
                "AND payload->>'post_id' = :id ORDER BY position",
                id=post_id,
            )
        ]
        assert len(events) == post["votes_version"]  # an event for each change, none for a repeat
        # Each event changed the vote the one before it set (a repeat writes none).
        values = [0] + [e["value"] for e in events]
        assert all(before != after for before, after in zip(values, values[1:], strict=False))
        assert values[-1] == value


def test_voting_on_a_post_while_deleting_it_does_not_deadlock(app, client, engine, make_account):
    """A delete locks the post, then its author's account; a vote must take the same order
    (post first), or an author voting on the post it is deleting deadlocks (PostgreSQL
    aborts one after a second: a 503)."""
    author = make_account()
    ids = [
        client.post("/api/v1/posts", json={"body": f"p{i}"}, headers=author.auth).get_json()["id"]
        for i in range(15)
    ]

    for post_id in ids:
        url = f"/api/v1/posts/{post_id}"
        responses = run_together(
            app,
            [
                lambda c, url=url: c.delete(url, headers=author.auth),
                lambda c, url=url: c.put(f"{url}/vote", json={"value": 1}, headers=author.auth),
                lambda c, url=url: c.put(f"{url}/vote", json={"value": -1}, headers=author.auth),
            ],
        )
        delete, *votes = (r.status_code for r in responses)
        assert delete == 204 and all(status in (200, 404) for status in votes), (delete, votes)

    assert fetch_all(engine, "SELECT count(*) AS n FROM posts WHERE status <> 'deleted'") == [
        {"n": 0}
    ]


def test_purging_an_accounts_follows_while_its_partners_follow_each_other_does_not_deadlock(
    app, engine, make_account
):
    """The account-deletion saga removes every follow of the account in one transaction; it
    must lock the accounts involved in the same (id) order a follow does, all at once, or it
    and a follow between two of the account's partners can each hold what the other waits for."""
    from feed.commands import purge_follows

    gone = make_account()
    partners = [make_account() for _ in range(8)]
    setup = app.test_client()
    for p in reversed(partners):  # the follows' rows (the purge's order) against the ids' order
        assert setup.post(f"/api/v1/accounts/{gone.id}/follow", headers=p.auth).status_code == 200
        assert setup.post(f"/api/v1/accounts/{p.id}/follow", headers=gone.auth).status_code == 200

    def purge(_client):
        with engine.begin() as conn:
            return len(purge_follows(conn, int(gone.id)))

    follows_among_partners = [
        (lambda c, a=a, b=b: c.post(f"/api/v1/accounts/{b.id}/follow", headers=a.auth).status_code)
        for a in partners
        for b in reversed(partners)
        if a is not b
    ][:24]
    purged, *statuses = run_together(app, [purge, *follows_among_partners])

    assert purged == 16 and statuses == [200] * len(follows_among_partners)
    assert fetch_all(
        engine,
        "SELECT count(*) AS n FROM follows WHERE :id IN (follower_id, followee_id)",
        id=int(gone.id),
    ) == [{"n": 0}]


def test_parallel_follows_of_one_account_count_exactly(app, engine, make_account):
    star = make_account()
    fans = [make_account() for _ in range(30)]

    responses = run_together(
        app,
        [
            (lambda c, f=f: c.post(f"/api/v1/accounts/{star.id}/follow", headers=f.auth))
            for f in fans
        ],
    )

    assert [r.status_code for r in responses] == [200] * 30
    (row,) = fetch_all(
        engine, "SELECT followers_count FROM accounts WHERE id = :id", id=int(star.id)
    )
    assert row["followers_count"] == 30


def test_mutual_follows_at_once_do_not_deadlock(app, engine, make_account):
    accounts = [make_account() for _ in range(6)]
    requests = [
        (lambda c, a=a, b=b: c.post(f"/api/v1/accounts/{b.id}/follow", headers=a.auth))
        for a in accounts
        for b in accounts
        if a is not b
    ]

    responses = run_together(app, requests)

    assert Counter(r.status_code for r in responses) == {200: 30}
    rows = fetch_all(engine, "SELECT followers_count, following_count FROM accounts")
    assert all(r["followers_count"] == 5 and r["following_count"] == 5 for r in rows)


def test_the_same_follow_sent_many_times_at_once_writes_one_event(app, engine, make_account):
    ada, bob = make_account(), make_account()

    run_together(
        app,
        [
            (lambda c: c.post(f"/api/v1/accounts/{bob.id}/follow", headers=ada.auth))
            for _ in range(15)
        ],
    )

    assert len(fetch_all(engine, "SELECT * FROM follows")) == 1
    assert len(fetch_all(engine, "SELECT * FROM outbox WHERE type = 'AccountFollowed'")) == 1
    (row,) = fetch_all(
        engine, "SELECT followers_count FROM accounts WHERE id = :id", id=int(bob.id)
    )
    assert row["followers_count"] == 1


def test_a_duplicate_handle_race_gives_one_201_and_the_rest_409(app, engine):
    responses = run_together(
        app,
        [
            (
                lambda c: c.post(
                    "/api/v1/accounts", json={"handle": "popular", "password": "12345678"}
                )
            )
            for _ in range(10)
        ],
    )

    assert Counter(r.status_code for r in responses) == {201: 1, 409: 9}
    assert len(fetch_all(engine, "SELECT * FROM accounts")) == 1
    assert len(fetch_all(engine, "SELECT * FROM outbox")) == 1


def test_parallel_requests_with_one_idempotency_key_run_once(app, engine, make_account):
    ada = make_account()
    headers = {**ada.auth, "Idempotency-Key": "post-once"}

    responses = run_together(
        app,
        [
            (lambda c: c.post("/api/v1/posts", json={"body": "once"}, headers=headers))
            for _ in range(10)
        ],
    )

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {201, 409} and statuses[201] >= 1
    assert len({r.get_json()["id"] for r in responses if r.status_code == 201}) == 1
    for r in responses:
        if r.status_code == 409:
            assert r.mimetype == "application/problem+json"
    assert len(fetch_all(engine, "SELECT * FROM posts")) == 1
    assert len(fetch_all(engine, "SELECT * FROM outbox WHERE type = 'PostPublished'")) == 1
