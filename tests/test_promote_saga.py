"""The promotion saga, run with the real engine and participants (messages relayed in this
process): happy path, transient and permanent failures, duplicates, operator retry and abort."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from feed.clock import rfc3339
from feed.outbox import Envelope, append_events, claim_batch
from feed.projections import project
from sagas import engine as saga_engine
from sagas.runtime import handle_saga_event
from sagas.services import inject_fault
from sagas.services.feed import withdrawal_events
from tests.conftest import drain, fetch_all
from workers.routing import Route, routes


@pytest.fixture
def admin(app, make_account):
    account = make_account("the_admin")
    app.test_cli_runner().invoke(args=["accounts", "make-admin", "the_admin"])
    return account


@pytest.fixture
def scene(app, client, make_account, admin, project_all):
    """An author with a post and 100 credits, a follower, and three other active readers."""
    author, fan = make_account("author"), make_account("fan")
    readers = [make_account(f"reader_{i}") for i in range(3)]
    client.post(f"/api/v1/accounts/{author.id}/follow", headers=fan.auth)
    post_id = client.post("/api/v1/posts", json={"body": "buy"}, headers=author.auth).get_json()[
        "id"
    ]
    r = client.post(
        f"/api/v1/admin/wallets/{author.id}/credit", json={"credits": 100}, headers=admin.auth
    )
    assert r.status_code == 200 and r.get_json()["balance"] == 100
    for account in (author, fan, *readers):
        client.get("/api/v1/timelines/home", headers=account.auth)
    project_all()
    return {"author": author, "fan": fan, "readers": readers, "post_id": post_id, "admin": admin}


def promote(client, scene, credits=3):
    r = client.post(
        f"/api/v1/posts/{scene['post_id']}/promote",
        json={"credits": credits},
        headers=scene["author"].auth,
    )
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["status"] == "running"
    return r.get_json()["saga_id"]


def saga(client, scene, saga_id):
    r = client.get(f"/api/v1/sagas/{saga_id}", headers=scene["author"].auth)
    assert r.status_code == 200
    return r.get_json()


def home_ids(client, account):
    return [
        p["id"]
        for p in client.get("/api/v1/timelines/home", headers=account.auth).get_json()["items"]
    ]


def assert_ledger_invariants(engine):
    for wallet in fetch_all(engine, "SELECT account_id, balance FROM wallets"):
        sums = dict(
            (r["kind"], r["total"])
            for r in fetch_all(
                engine,
                "SELECT kind, sum(amount) AS total FROM ledger_entries WHERE account_id = :a "
                "GROUP BY kind",
                a=wallet["account_id"],
            )
        )
        credits, debits, refunds = (sums.get(k, 0) for k in ("credit", "debit", "refund"))
        assert credits - debits + refunds == wallet["balance"]
        completed = fetch_all(
            engine,
            "SELECT coalesce(sum(credits), 0) AS cost FROM campaigns WHERE account_id = :a "
            "AND status = 'completed'",
            a=wallet["account_id"],
        )[0]["cost"]
        assert debits - refunds == completed


def settle(app, rounds=40):
    """Relay until nothing is left, firing due retry timers (the sweeper's job) in between."""
    svc = app.extensions["feed"]
    for _ in range(rounds):
        drain(svc)
        counts = saga_engine.sweep(svc.engine)
        if not any(counts.values()) and _open_sagas(svc.engine) == 0:
            return
        time.sleep(0.1)


def _open_sagas(engine):
    return fetch_all(
        engine,
        "SELECT count(*) AS n FROM sagas WHERE status IN ('running', 'compensating', 'stuck')",
    )[0]["n"]


def test_a_promotion_pays_places_the_post_and_notifies(app, client, engine, scene):
    saga_id = promote(client, scene, credits=3)
    settle(app)

    done = saga(client, scene, saga_id)
    assert done["status"] == "completed"
    assert [s["name"] for s in done["steps"]] == [
        "debit_wallet",
        "create_campaign",
        "place_post",
        "complete_campaign",
        "notify_author",
    ]
    for reader in scene["readers"]:
        assert scene["post_id"] in home_ids(client, reader)
    wallet = client.get("/api/v1/wallet", headers=scene["author"].auth).get_json()
    assert wallet["balance"] == 97
    assert [e["kind"] for e in wallet["entries"]] == ["debit", "credit"]
    notes = client.get("/api/v1/notifications", headers=scene["author"].auth).get_json()
    assert notes["items"][0]["kind"] == "promotion_finished"
    assert_ledger_invariants(engine)


def test_placements_survive_a_rebuild_of_the_feed(app, client, engine, scene):
    promote(client, scene, credits=3)
    settle(app)
    app.extensions["feed"].redis.flushdb()
    for reader in scene["readers"]:
        assert scene["post_id"] in home_ids(client, reader)


def test_too_few_credits_fails_the_first_step_and_compensates_nothing(app, client, engine, scene):
    saga_id = promote(client, scene, credits=500)
    settle(app)
    done = saga(client, scene, saga_id)
    assert done["status"] == "compensated"
    assert "insufficient credits" in done["last_error"]
    assert client.get("/api/v1/wallet", headers=scene["author"].auth).get_json()["balance"] == 100
    assert_ledger_invariants(engine)


def test_a_transient_failure_is_retried_and_the_saga_completes(app, client, engine, scene):
    with engine.begin() as conn:
        inject_fault(conn, "feed", "place_promoted", "transient", 2)
    saga_id = promote(client, scene)
    settle(app)
    done = saga(client, scene, saga_id)
    assert done["status"] == "completed"
    attempts = [s for s in done["steps"] if s["name"] == "place_post"]
    assert [s["status"] for s in attempts] == ["failed", "failed", "succeeded"]
    assert_ledger_invariants(engine)


def test_a_permanent_failure_compensates_in_reverse(app, client, engine, scene):
    with engine.begin() as conn:
        inject_fault(conn, "feed", "complete_campaign", "permanent", 1)
    saga_id = promote(client, scene)
    settle(app)

    done = saga(client, scene, saga_id)
    assert done["status"] == "compensated"
    compensations = [s["name"] for s in done["steps"] if s["kind"] == "compensation"]
    assert compensations == ["place_post", "create_campaign", "debit_wallet"]
    for reader in scene["readers"]:
        assert scene["post_id"] not in home_ids(client, reader)
    assert client.get("/api/v1/wallet", headers=scene["author"].auth).get_json()["balance"] == 100
    assert fetch_all(engine, "SELECT status FROM campaigns") == [{"status": "cancelled"}]
    assert fetch_all(engine, "SELECT * FROM campaign_placements") == []
    assert_ledger_invariants(engine)


def test_a_failure_past_the_point_of_no_return_waits_for_an_operator(app, client, engine, scene):
    with engine.begin() as conn:
        inject_fault(conn, "notifications", "notify_promotion_finished", "permanent", 1)
    saga_id = promote(client, scene)
    settle(app)
    failed = saga(client, scene, saga_id)
    assert failed["status"] == "failed"
    assert "point of no return" in failed["last_error"]
    assert_ledger_invariants(engine)  # the campaign is complete and paid: no refund

    listed = client.get("/api/v1/admin/sagas?status=failed", headers=scene["admin"].auth).get_json()
    assert [s["id"] for s in listed["items"]] == [saga_id]
    first = client.post(f"/api/v1/admin/sagas/{saga_id}/retry", headers=scene["admin"].auth)
    second = client.post(f"/api/v1/admin/sagas/{saga_id}/retry", headers=scene["admin"].auth)
    assert first.status_code == second.status_code == 202
    settle(app)

    shown = client.get(f"/api/v1/admin/sagas/{saga_id}", headers=scene["admin"].auth).get_json()
    assert shown["status"] == "completed"
    assert [a["action"] for a in shown["operator_actions"]] == ["retry"]  # once, not twice
    assert shown["operator_actions"][0]["operator"] == f"account:{scene['admin'].id}"
    notify_attempts = [s for s in shown["steps"] if s["name"] == "notify_author"]
    assert [s["status"] for s in notify_attempts] == ["failed", "succeeded"]
    assert len(fetch_all(engine, "SELECT * FROM notifications")) == 1


def test_duplicate_step_deliveries_and_replies_have_one_effect(app, client, engine, scene):
    svc = app.extensions["feed"]
    saga_id = promote(client, scene, credits=5)
    for _ in range(12):  # deliver every message three times, until the saga is done
        with engine.begin() as conn:
            batch = claim_batch(conn, 100)
            conn.execute(text("UPDATE outbox SET published_at = now() WHERE published_at IS NULL"))
        if not batch:
            break
        for envelope in batch * 3:
            if Route.SAGAS in routes(envelope.type):
                handle_saga_event(svc, envelope)
    assert saga(client, scene, saga_id)["status"] == "completed"
    assert client.get("/api/v1/wallet", headers=scene["author"].auth).get_json()["balance"] == 95
    assert len(fetch_all(engine, "SELECT * FROM ledger_entries WHERE kind = 'debit'")) == 1
    assert len(fetch_all(engine, "SELECT * FROM notifications")) == 1
    assert_ledger_invariants(engine)


def test_an_operator_abort_compensates_a_running_saga(app, client, engine, scene):
    with engine.begin() as conn:
        inject_fault(conn, "feed", "place_promoted", "transient", 100)
    saga_id = promote(client, scene)
    drain(app.extensions["feed"])  # now waiting to retry place_post
    r = client.post(f"/api/v1/admin/sagas/{saga_id}/abort", headers=scene["admin"].auth)
    assert r.status_code == 202
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM participant_faults"))
    settle(app)
    shown = client.get(f"/api/v1/admin/sagas/{saga_id}", headers=scene["admin"].auth).get_json()
    assert shown["status"] == "compensated"
    assert [a["action"] for a in shown["operator_actions"]] == ["abort"]
    assert client.get("/api/v1/wallet", headers=scene["author"].auth).get_json()["balance"] == 100
    assert_ledger_invariants(engine)


def relay_holding_back(app, command: str) -> list[Envelope]:
    """Relay and run everything, as ``drain`` does, except the step requests for ``command``:
    a slow broker or participant has them. Returns them, for a late delivery."""
    from feed.outbox import relay_once
    from feed.projections import apply_fan_out_page

    svc = app.extensions["feed"]
    held: list[Envelope] = []

    def publish(batch):
        for envelope in batch:
            if envelope.type == "SagaStepRequested" and envelope.payload["command"] == command:
                held.append(envelope)
            elif not handle_saga_event(svc, envelope):
                project(svc.store, envelope, lambda page: apply_fan_out_page(svc.store, page))

    while relay_once(svc.engine, publish):
        pass
    return held


def test_no_abort_while_the_point_of_no_return_may_still_commit(app, client, engine, scene):
    """Issue 28: an abort while complete_campaign ran refunded a campaign that completed."""
    saga_id = promote(client, scene)
    (late,) = relay_holding_back(app, "complete_campaign")

    aborted = client.post(f"/api/v1/admin/sagas/{saga_id}/abort", headers=scene["admin"].auth)
    handle_saga_event(app.extensions["feed"], late)  # the step commits after all
    settle(app)

    assert aborted.status_code == 409
    assert aborted.mimetype == "application/problem+json"
    assert saga(client, scene, saga_id)["status"] == "completed"
    assert_ledger_invariants(engine)


def test_a_timed_out_point_of_no_return_goes_forward_only(
    app, client, engine, scene, quick_timeouts, monkeypatch
):
    """Issue 28: a pivot that timed out for good started compensation, and then committed."""
    import dataclasses

    quick = saga_engine.LATEST["promote_post"]
    pivot = quick.pivot
    steps = list(quick.steps)
    steps[pivot] = dataclasses.replace(steps[pivot], retry=saga_engine.RetryPolicy(attempts=1))
    once = dataclasses.replace(quick, steps=tuple(steps), stuck_after_seconds=60)
    monkeypatch.setitem(saga_engine.DEFINITIONS, ("promote_post", 1), once)
    monkeypatch.setitem(saga_engine.LATEST, "promote_post", once)
    saga_id = promote(client, scene)
    (late,) = relay_holding_back(app, "complete_campaign")
    time.sleep(0.4)  # past the step's timeout
    saga_engine.sweep(engine)
    handle_saga_event(app.extensions["feed"], late)
    settle(app)

    failed = saga(client, scene, saga_id)
    assert failed["status"] == "failed", failed
    assert "point of no return" in failed["last_error"]
    assert_ledger_invariants(engine)
    admin = scene["admin"].auth
    assert client.post(f"/api/v1/admin/sagas/{saga_id}/abort", headers=admin).status_code == 409
    assert client.post(f"/api/v1/admin/sagas/{saga_id}/retry", headers=admin).status_code == 202
    settle(app)
    assert saga(client, scene, saga_id)["status"] == "completed"
    assert_ledger_invariants(engine)


def test_only_admins_reach_the_admin_api_and_only_owners_their_sagas(client, scene):
    saga_id = promote(client, scene)
    fan = scene["fan"]
    assert client.get("/api/v1/admin/sagas", headers=fan.auth).status_code == 403
    assert client.post(f"/api/v1/admin/sagas/{saga_id}/retry", headers=fan.auth).status_code == 403
    assert client.get(f"/api/v1/sagas/{saga_id}", headers=fan.auth).status_code == 404
    assert client.get("/api/v1/sagas/not-a-uuid", headers=fan.auth).status_code == 404
    other = client.post(
        f"/api/v1/posts/{scene['post_id']}/promote", json={"credits": 1}, headers=fan.auth
    )
    assert other.status_code == 403
    bad = client.post(
        f"/api/v1/posts/{scene['post_id']}/promote",
        json={"credits": 0},
        headers=scene["author"].auth,
    )
    assert bad.status_code == 422


def test_an_operator_finds_inspects_and_retries_a_failed_saga_from_the_cli(
    app, client, engine, scene
):
    runner = app.test_cli_runner()
    runner.invoke(
        args=[
            "sagas",
            "inject-fault",
            "notifications",
            "notify_promotion_finished",
            "--mode",
            "permanent",
        ]
    )
    saga_id = promote(client, scene)
    settle(app)

    listed = runner.invoke(args=["sagas", "list", "--status", "failed"])
    assert saga_id in listed.output and "promote_post" in listed.output
    shown = runner.invoke(args=["sagas", "show", saga_id])
    assert "notify_author" in shown.output and "injected permanent fault" in shown.output
    retried = runner.invoke(args=["sagas", "retry", saga_id, "--operator", "cli:ops"])
    assert retried.exit_code == 0, retried.output
    settle(app)
    final = runner.invoke(args=["sagas", "show", saga_id])
    assert " completed " in final.output
    assert "operator cli:ops: retry" in final.output
    assert runner.invoke(args=["sagas", "abort", saga_id]).exit_code != 0  # completed: refused
    assert runner.invoke(args=["sagas", "show", "nope"]).exit_code != 0


def test_saga_metrics_count_by_type_and_status_steps_retries_compensations(
    app, client, engine, scene
):
    with engine.begin() as conn:
        inject_fault(conn, "feed", "place_promoted", "transient", 1)
    promote(client, scene)
    promote(client, scene, credits=500)  # too few credits: compensated
    settle(app)
    text_ = client.get("/metrics").get_data(as_text=True)
    assert 'feed_sagas{status="completed",type="promote_post"} 1.0' in text_
    assert 'feed_sagas{status="compensated",type="promote_post"} 1.0' in text_
    assert 'feed_saga_retries_total{saga="promote_post",step="place_post"}' in text_
    assert 'feed_saga_compensations_total{saga="promote_post"}' in text_
    assert (
        'feed_saga_step_seconds_count{kind="action",outcome="ok",saga="promote_post",step="debit_wallet"}'
        in text_
    )


def test_a_saga_finishes_on_the_version_it_started_with(app, client, engine, scene, monkeypatch):
    from sagas.engine import DEFINITIONS, LATEST, SagaDefinition, Step
    from sagas.promote import PROMOTE_POST

    saga_id = promote(client, scene)  # started on v1
    v2 = SagaDefinition(
        "promote_post",
        2,
        steps=(
            Step("debit_wallet", "billing", "debit", compensation="refund"),
            Step("notify_author", "notifications", "notify_promotion_finished"),
        ),
    )
    monkeypatch.setitem(DEFINITIONS, ("promote_post", 2), v2)
    monkeypatch.setitem(LATEST, "promote_post", v2)
    settle(app)
    done = saga(client, scene, saga_id)
    assert done["status"] == "completed" and done["version"] == 1
    assert [s["name"] for s in done["steps"]] == [step.name for step in PROMOTE_POST.steps]


def test_retry_with_repair_rebuilds_the_keys_the_saga_touched_after_a_dry_run(
    app, client, engine, scene
):
    from feed.keys import feed_key, post_key

    with engine.begin() as conn:
        inject_fault(conn, "notifications", "notify_promotion_finished", "permanent", 1)
    saga_id = promote(client, scene, credits=3)
    settle(app)
    redis = app.extensions["feed"].redis
    damaged_reader = scene["readers"][0]
    redis.zrem(feed_key(damaged_reader.id), scene["post_id"])  # the placement got lost
    redis.hset(post_key(scene["post_id"]), mapping={"up": 99})  # and the counts went wrong
    admin = scene["admin"].auth
    url = f"/api/v1/admin/sagas/{saga_id}/retry"

    dry = client.post(f"{url}?repair=true&dry_run=true", headers=admin)

    assert dry.status_code == 200
    changes = dry.get_json()["repair"]["changes"]
    assert changes[feed_key(damaged_reader.id)] == {"add": [scene["post_id"]], "remove": []}
    assert changes[post_key(scene["post_id"])]["counts"] == {"redis": [99, 0], "postgres": [0, 0]}
    assert scene["post_id"] not in home_ids(client, damaged_reader)  # a dry run changes nothing
    assert saga(client, scene, saga_id)["status"] == "failed"

    done = client.post(f"{url}?repair=true", headers=admin)
    assert done.status_code == 202
    settle(app)
    assert scene["post_id"] in home_ids(client, damaged_reader)
    assert client.get(f"/api/v1/posts/{scene['post_id']}").get_json()["up"] == 0
    shown = client.get(f"/api/v1/admin/sagas/{saga_id}", headers=admin).get_json()
    assert shown["status"] == "completed"
    assert [a["action"] for a in shown["operator_actions"]] == ["repair", "retry"]
    # a completed saga is not retried, so it is not repaired either
    assert client.post(f"{url}?repair=true&dry_run=true", headers=admin).status_code == 409


def test_retry_with_repair_replayed_by_its_key_repairs_nothing_again(app, client, engine, scene):
    """Issue 28: the replay ran the repair again and lost the command's headers."""
    from feed.keys import feed_key

    with engine.begin() as conn:
        inject_fault(conn, "notifications", "notify_promotion_finished", "permanent", 1)
    saga_id = promote(client, scene, credits=3)
    settle(app)
    redis = app.extensions["feed"].redis
    damaged = feed_key(scene["readers"][0].id)
    redis.zrem(damaged, scene["post_id"])
    url = f"/api/v1/admin/sagas/{saga_id}/retry?repair=true"
    keyed = {**scene["admin"].auth, "Idempotency-Key": "repair-1"}

    first = client.post(url, headers=keyed)
    redis.zrem(damaged, scene["post_id"])  # damaged again: a replay must not touch it
    again = client.post(url, headers=keyed)

    assert first.status_code == again.status_code == 202
    assert first.headers["X-Consistency-Token"]
    assert again.headers["X-Consistency-Token"] == first.headers["X-Consistency-Token"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.get_json() == first.get_json()
    assert list(first.get_json()["repair"]["changes"]) == [damaged]
    assert redis.zscore(damaged, scene["post_id"]) is None
    shown = client.get(f"/api/v1/admin/sagas/{saga_id}", headers=scene["admin"].auth).get_json()
    assert [a["action"] for a in shown["operator_actions"]] == ["repair", "retry"]


def test_repair_from_the_cli(app, client, engine, scene):
    from feed.keys import feed_key

    runner = app.test_cli_runner()
    runner.invoke(
        args=[
            "sagas",
            "inject-fault",
            "notifications",
            "notify_promotion_finished",
            "--mode",
            "permanent",
        ]
    )
    saga_id = promote(client, scene)
    settle(app)
    app.extensions["feed"].redis.zrem(feed_key(scene["readers"][1].id), scene["post_id"])

    dry = runner.invoke(args=["sagas", "retry", saga_id, "--repair", "--dry-run"])
    assert "(dry run)" in dry.output and feed_key(scene["readers"][1].id) in dry.output
    fixed = runner.invoke(args=["sagas", "retry", saga_id, "--repair", "--operator", "cli:ops"])
    assert fixed.exit_code == 0, fixed.output
    settle(app)
    assert scene["post_id"] in home_ids(client, scene["readers"][1])
    assert "operator cli:ops: repair" in runner.invoke(args=["sagas", "show", saga_id]).output


@pytest.fixture
def quick_timeouts(monkeypatch):
    """The promotion saga with 0.3 s step timeouts and a 1 s progress deadline."""
    import dataclasses

    from sagas.engine import DEFINITIONS, LATEST
    from sagas.promote import PROMOTE_POST

    quick = dataclasses.replace(
        PROMOTE_POST,
        steps=tuple(dataclasses.replace(s, timeout_seconds=0.3) for s in PROMOTE_POST.steps),
        stuck_after_seconds=1.0,
    )
    monkeypatch.setitem(DEFINITIONS, ("promote_post", 1), quick)
    monkeypatch.setitem(LATEST, "promote_post", quick)


def lose_undelivered_step_requests(engine) -> int:
    """The broker loses the step commands now in the outbox (they never reach a participant)."""
    with engine.begin() as conn:
        return conn.execute(
            text(
                "UPDATE outbox SET published_at = now() WHERE published_at IS NULL "
                "AND type = 'SagaStepRequested'"
            )
        ).rowcount


def test_a_step_without_a_reply_times_out_and_is_sent_again(
    app, client, engine, scene, quick_timeouts
):
    saga_id = promote(client, scene)
    assert lose_undelivered_step_requests(engine) == 1
    time.sleep(0.4)
    settle(app)
    done = saga(client, scene, saga_id)
    assert done["status"] == "completed"
    debit = [s for s in done["steps"] if s["name"] == "debit_wallet"]
    assert [s["status"] for s in debit] == ["timed_out", "succeeded"]
    assert client.get("/api/v1/wallet", headers=scene["author"].auth).get_json()["balance"] == 97


def test_a_saga_without_progress_past_its_deadline_is_marked_stuck_and_resumed(
    app, client, engine, scene, quick_timeouts
):
    saga_id = promote(client, scene)
    lose_undelivered_step_requests(engine)
    with engine.begin() as conn:  # the attempt vanished (say, an operator cleaned it up by hand)
        conn.execute(text("UPDATE saga_steps SET status = 'superseded' WHERE status = 'sent'"))
    time.sleep(1.1)
    saga_engine.sweep(engine)

    # stuck, and seen so by operators for a while (it used to be resumed in the same breath)
    admin = scene["admin"].auth
    listed = client.get("/api/v1/admin/sagas?status=stuck", headers=admin).get_json()
    assert [s["id"] for s in listed["items"]] == [saga_id]
    with engine.begin() as conn:  # the window (SAGA_STUCK_VISIBLE_SECONDS) passes
        conn.execute(text("UPDATE sagas SET retry_at = now() - interval '1 second'"))
    settle(app)  # the sweeper resumes it
    shown = client.get(f"/api/v1/admin/sagas/{saga_id}", headers=admin).get_json()
    assert shown["status"] == "completed"
    assert [(a["operator"], a["action"]) for a in shown["operator_actions"]] == [
        ("sweeper", "stuck"),
        ("sweeper", "resume"),
    ]


def test_admin_actions_are_commands_with_a_key_and_a_token(app, client, engine, scene):
    """Retry, abort and credit take an Idempotency-Key (the same key answers the first answer
    again, and acts once) and answer an X-Consistency-Token; a credit names its admin."""
    admin = scene["admin"]
    with engine.begin() as conn:
        inject_fault(conn, "notifications", "notify_promotion_finished", "permanent", 1)
    saga_id = promote(client, scene)
    settle(app)
    keyed = {**admin.auth, "Idempotency-Key": "retry-1"}

    first = client.post(f"/api/v1/admin/sagas/{saga_id}/retry", headers=keyed)
    settle(app)
    again = client.post(f"/api/v1/admin/sagas/{saga_id}/retry", headers=keyed)

    assert first.status_code == again.status_code == 202
    assert first.headers["X-Consistency-Token"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.get_json() == first.get_json()  # the answer of then, not the saga of now
    shown = client.get(f"/api/v1/admin/sagas/{saga_id}", headers=admin.auth).get_json()
    assert [a["action"] for a in shown["operator_actions"]] == ["retry"]

    aborted = client.post(
        f"/api/v1/admin/sagas/{saga_id}/abort", headers={**admin.auth, "Idempotency-Key": "a-1"}
    )
    assert aborted.status_code == 409  # completed now: a conflict, not remembered

    credit_key = {**admin.auth, "Idempotency-Key": "credit-1"}
    url = f"/api/v1/admin/wallets/{scene['fan'].id}/credit"
    credits = [client.post(url, json={"credits": 7}, headers=credit_key) for _ in range(2)]
    assert [c.status_code for c in credits] == [200, 200]
    assert credits[0].headers["X-Consistency-Token"]
    wallet = client.get("/api/v1/wallet", headers=scene["fan"].auth).get_json()
    assert wallet["balance"] == 7  # once
    (entry,) = wallet["entries"]
    assert entry["counter_account"] == f"admin:{admin.id}" and entry["at"]


def test_placements_reach_feeds_only_by_events_late_ones_undo_nothing(app, client, engine, scene):
    """The promotion changes feeds only through PostPlaced and PostUnplaced events, and a
    placement projected again late, after its withdrawal, puts nothing back: the feeds
    follow PostgreSQL's placements and follows."""
    saga_id = promote(client, scene)
    settle(app)
    assert saga(client, scene, saga_id)["status"] == "completed"
    post_id, author, readers = scene["post_id"], scene["author"], scene["readers"]
    assert all(post_id in home_ids(client, r) for r in readers)
    [placement] = fetch_all(engine, "SELECT * FROM outbox WHERE type = 'PostPlaced'")
    assert sorted(placement["payload"]["account_ids"]) == sorted(r.id for r in readers)

    # The placements withdrawn (one reader follows the author meanwhile), by their event.
    client.post(f"/api/v1/accounts/{author.id}/follow", headers=readers[0].auth)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM campaign_placements"))
        append_events(
            conn, withdrawal_events(int(post_id), int(author.id), [int(r.id) for r in readers])
        )
    settle(app)
    assert post_id in home_ids(client, readers[0])  # a follower keeps it
    assert not any(post_id in home_ids(client, r) for r in readers[1:])

    late = Envelope(
        position=placement["position"],
        event_id=str(placement["event_id"]),
        type=placement["type"],
        version=placement["version"],
        payload=placement["payload"],
        correlation_id=placement["correlation_id"],
        created_at=rfc3339(placement["created_at"]),
    )
    project(app.extensions["feed"].store, late, lambda page: None)
    assert not any(post_id in home_ids(client, r) for r in readers[1:])
