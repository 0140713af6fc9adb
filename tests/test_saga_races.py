"""Late and duplicate deliveries, aborts with a step in flight, and conflicting posts: each
step's effect happens once, and the invariants hold. (Found by review; each test failed before
its fix.)"""

from __future__ import annotations

import time
import uuid

from sqlalchemy import text

from feed.outbox import claim_batch
from sagas.runtime import handle_saga_event
from sagas.services import inject_fault
from tests.conftest import fetch_all
from tests.test_promote_saga import (  # noqa: F401  (fixtures)
    admin,
    assert_ledger_invariants,
    promote,
    quick_timeouts,
    saga,
    scene,
    settle,
)
from tests.test_publish_saga import upload


def take(engine) -> list:
    """Everything now in the outbox, marked as published: held back, as a slow broker would."""
    with engine.begin() as conn:
        batch = claim_batch(conn, 100)
        conn.execute(text("UPDATE outbox SET published_at = now() WHERE published_at IS NULL"))
    return batch


def test_a_step_delivered_late_after_its_retry_succeeded_has_no_second_effect(
    app, client, engine, scene, quick_timeouts
):
    svc = app.extensions["feed"]
    saga_id = promote(client, scene, credits=3)
    held = [e for e in take(engine) if e.type == "SagaStepRequested"]
    time.sleep(0.4)
    settle(app)  # attempt 1 times out, attempt 2 debits, the saga completes
    for envelope in held:  # then attempt 1 arrives
        handle_saga_event(svc, envelope)
    settle(app)
    assert saga(client, scene, saga_id)["status"] == "completed"
    assert client.get("/api/v1/wallet", headers=scene["author"].auth).get_json()["balance"] == 97
    assert len(fetch_all(engine, "SELECT * FROM ledger_entries WHERE kind = 'debit'")) == 1
    assert_ledger_invariants(engine)


def test_placing_twice_never_places_more_than_was_paid_for(
    app, client, engine, scene, make_account, quick_timeouts
):
    svc = app.extensions["feed"]
    for i in range(3):
        client.get("/api/v1/timelines/home", headers=make_account(f"extra_{i}").auth)
    saga_id = promote(client, scene, credits=3)
    held = None
    while held is None:
        for envelope in take(engine):
            if (
                envelope.type == "SagaStepRequested"
                and envelope.payload["command"] == "place_promoted"
            ):
                held = envelope
            else:
                handle_saga_event(svc, envelope)
    handle_saga_event(svc, held)  # attempt 1 runs...
    take(engine)  # ...and its reply is lost
    time.sleep(0.4)
    settle(app)
    assert saga(client, scene, saga_id)["status"] == "completed"
    assert fetch_all(engine, "SELECT count(*) AS n FROM campaign_placements")[0]["n"] == 3


def test_abort_is_refused_past_the_point_of_no_return(app, client, engine, scene):
    with engine.begin() as conn:
        inject_fault(conn, "notifications", "notify_promotion_finished", "permanent", 1)
    saga_id = promote(client, scene)
    settle(app)
    r = client.post(f"/api/v1/admin/sagas/{saga_id}/abort", headers=scene["admin"].auth)
    assert r.status_code == 409
    assert saga(client, scene, saga_id)["status"] == "failed"
    assert_ledger_invariants(engine)


def test_an_abort_with_a_debit_in_flight_loses_no_money(app, client, engine, scene):
    svc = app.extensions["feed"]
    saga_id = promote(client, scene, credits=3)
    held = [e for e in take(engine) if e.type == "SagaStepRequested"]
    r = client.post(f"/api/v1/admin/sagas/{saga_id}/abort", headers=scene["admin"].auth)
    assert r.status_code == 202
    settle(app)  # the refund runs first...
    for envelope in held:  # ...then the debit arrives, and is refused
        handle_saga_event(svc, envelope)
    settle(app)
    assert saga(client, scene, saga_id)["status"] == "compensated"
    assert client.get("/api/v1/wallet", headers=scene["author"].auth).get_json()["balance"] == 100
    assert_ledger_invariants(engine)


def test_an_abort_with_a_debit_that_ran_but_did_not_answer_refunds_it(app, client, engine, scene):
    svc = app.extensions["feed"]
    saga_id = promote(client, scene, credits=3)
    for envelope in take(engine):
        handle_saga_event(svc, envelope)  # the debit runs; its reply waits in the outbox
    client.post(f"/api/v1/admin/sagas/{saga_id}/abort", headers=scene["admin"].auth)
    settle(app)
    assert saga(client, scene, saga_id)["status"] == "compensated"
    assert client.get("/api/v1/wallet", headers=scene["author"].auth).get_json()["balance"] == 100
    assert_ledger_invariants(engine)


def test_one_media_file_cannot_be_attached_to_two_posts(app, client, engine, scene):
    author = scene["author"]
    media_id = upload(client, author).get_json()["id"]
    first = client.post(
        "/api/v1/posts", json={"body": "one", "media_ids": [media_id]}, headers=author.auth
    )
    second = client.post(
        "/api/v1/posts", json={"body": "two", "media_ids": [media_id]}, headers=author.auth
    )
    settle(app)
    statuses = sorted(
        saga(client, scene, r.get_json()["saga_id"])["status"] for r in (first, second)
    )
    assert statuses == ["compensated", "completed"]
    assert len(fetch_all(engine, "SELECT * FROM media WHERE status = 'attached'")) == 1
    rejected = fetch_all(engine, "SELECT count(*) AS n FROM posts WHERE status = 'rejected'")
    assert rejected[0]["n"] == 1


def test_a_pending_post_deleted_mid_saga_is_not_published_and_keeps_no_media(
    app, client, engine, scene
):
    svc = app.extensions["feed"]
    author = scene["author"]
    media_id = upload(client, author).get_json()["id"]
    post = client.post(
        "/api/v1/posts", json={"body": "x", "media_ids": [media_id]}, headers=author.auth
    ).get_json()
    attach = None
    while attach is None:  # run the saga until it asks the media service to attach
        for envelope in take(engine):
            if envelope.type == "SagaStepRequested" and envelope.payload["command"] == "attach":
                attach = envelope
            else:
                handle_saga_event(svc, envelope)
    client.delete(f"/api/v1/posts/{post['id']}", headers=author.auth)  # deleted while pending
    handle_saga_event(svc, attach)
    settle(app)
    assert saga(client, scene, post["saga_id"])["status"] == "compensated"
    assert fetch_all(engine, "SELECT status FROM posts WHERE id = :id", id=int(post["id"])) == [
        {"status": "deleted"}
    ]
    assert (
        fetch_all(engine, "SELECT count(*) AS n FROM media WHERE status = 'attached'")[0]["n"] == 0
    )
    kinds = [
        n["kind"]
        for n in client.get("/api/v1/notifications", headers=author.auth).get_json()["items"]
    ]
    assert "post_published" not in kinds and "post_rejected" in kinds


def test_the_rejection_notification_says_why(app, client, scene):
    author = scene["author"]
    media_id = upload(client, author).get_json()["id"]
    client.post(
        "/api/v1/posts",
        json={"body": "visit scamlink", "media_ids": [media_id]},
        headers=author.auth,
    )
    settle(app)
    (note,) = client.get("/api/v1/notifications", headers=author.auth).get_json()["items"]
    assert "banned words" in note["payload"]["reason"]


def test_the_admin_saga_list_pages_with_its_cursor(client, scene):
    for _ in range(3):
        promote(client, scene, credits=1)
    admin_auth = scene["admin"].auth
    first = client.get("/api/v1/admin/sagas?limit=2", headers=admin_auth).get_json()
    second = client.get(
        f"/api/v1/admin/sagas?limit=2&max_id={first['next_max_id']}", headers=admin_auth
    ).get_json()
    ids = [s["id"] for s in first["items"] + second["items"]]
    assert len(ids) == 3 == len(set(ids)) and second["next_max_id"] is None
    bad = client.get(f"/api/v1/admin/sagas?max_id={uuid.uuid4()}", headers=admin_auth)
    assert bad.status_code == 400
    assert client.get("/api/v1/admin/sagas?limit=99", headers=admin_auth).status_code == 422
