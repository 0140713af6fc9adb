"""Every step of every saga, failing for a while (it retries and the saga completes) and failing
for good (before the point of no return it compensates, after it the saga waits as failed)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from sagas.delete_account import DELETE_ACCOUNT
from sagas.promote import PROMOTE_POST
from sagas.publish import PUBLISH_WITH_MEDIA
from sagas.services import inject_fault
from tests.conftest import fetch_all
from tests.test_promote_saga import settle
from tests.test_publish_saga import upload

CASES = [
    (definition, index, mode)
    for definition in (PROMOTE_POST, PUBLISH_WITH_MEDIA, DELETE_ACCOUNT)
    for index in range(len(definition.steps))
    for mode in ("transient", "permanent")
]


def expected_end(definition, index: int, mode: str) -> str:
    if mode == "transient":
        return "completed"
    pivot = definition.pivot
    return "failed" if pivot is not None and index > pivot else "compensated"


def start(definition, client, make_account, admin):
    author = make_account("author")
    client.get("/api/v1/timelines/home", headers=author.auth)
    if definition is PROMOTE_POST:
        post_id = client.post("/api/v1/posts", json={"body": "ad"}, headers=author.auth).get_json()[
            "id"
        ]
        client.post(
            f"/api/v1/admin/wallets/{author.id}/credit", json={"credits": 5}, headers=admin.auth
        )
        r = client.post(
            f"/api/v1/posts/{post_id}/promote", json={"credits": 2}, headers=author.auth
        )
    elif definition is PUBLISH_WITH_MEDIA:
        media_id = upload(client, author).get_json()["id"]
        r = client.post(
            "/api/v1/posts", json={"body": "pic", "media_ids": [media_id]}, headers=author.auth
        )
    else:
        r = client.delete("/api/v1/accounts/me", headers=author.auth)
    assert r.status_code == 202
    return r.get_json()["saga_id"]


@pytest.mark.parametrize(
    ("definition", "index", "mode"),
    CASES,
    ids=[f"{d.type}-{d.steps[i].name}-{m}" for d, i, m in CASES],
)
def test_each_step_failing(app, client, engine, make_account, definition, index, mode):
    admin = make_account("the_admin")
    app.test_cli_runner().invoke(args=["accounts", "make-admin", "the_admin"])
    step = definition.steps[index]
    with engine.begin() as conn:
        inject_fault(conn, step.service, step.action, mode, 1)
    saga_id = start(definition, client, make_account, admin)
    settle(app)

    (saga,) = fetch_all(engine, "SELECT status, last_error FROM sagas WHERE id = :id", id=saga_id)
    assert saga["status"] == expected_end(definition, index, mode), saga
    attempts = fetch_all(
        engine,
        "SELECT status FROM saga_steps WHERE saga_id = :id AND name = :n AND kind = 'action' "
        "ORDER BY sent_at",
        id=saga_id,
        n=step.name,
    )
    if mode == "transient":
        assert [a["status"] for a in attempts] == ["failed", "succeeded"]
    else:
        assert [a["status"] for a in attempts] == ["failed"] and saga["last_error"]
        compensated = fetch_all(
            engine,
            "SELECT step_index FROM saga_steps WHERE saga_id = :id AND kind = 'compensation' "
            "AND status = 'succeeded' ORDER BY sent_at",
            id=saga_id,
        )
        if saga["status"] == "compensated":  # in reverse, each completed step that can be undone
            undoable = [i for i in range(index) if definition.steps[i].compensation]
            assert [c["step_index"] for c in compensated] == list(reversed(undoable))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM participant_faults"))
