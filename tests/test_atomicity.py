"""A command's rows and its events commit together: a failure in the middle leaves neither."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from feed.outbox import listen_connection
from feed.unit_of_work import UnitOfWork
from tests.conftest import TABLES, fetch_all


def snapshot(engine) -> dict[str, list]:
    """Every row of every write-model table (what 'nothing changed' is compared against)."""
    return {table: fetch_all(engine, f"SELECT * FROM {table}") for table in TABLES}


@pytest.fixture
def world(client, make_account):
    """Three accounts, a post by ada, ada following carl, bob following nobody yet."""
    ada, bob, carl = make_account("ada_l"), make_account("bob_b"), make_account("carl_c")
    post_id = client.post("/api/v1/posts", json={"body": "hi"}, headers=ada.auth).get_json()["id"]
    assert client.post(f"/api/v1/accounts/{carl.id}/follow", headers=ada.auth).status_code == 200
    return {"ada": ada, "bob": bob, "carl": carl, "post_id": post_id}


COMMANDS = {
    "register": lambda c, w: c.post(
        "/api/v1/accounts", json={"handle": "carol", "password": "12345678"}
    ),
    "publish": lambda c, w: c.post("/api/v1/posts", json={"body": "x"}, headers=w["ada"].auth),
    # With a key, the idempotency record commits with the post: a transaction, not one statement.
    "publish with a key": lambda c, w: c.post(
        "/api/v1/posts", json={"body": "x"}, headers={**w["ada"].auth, "Idempotency-Key": "k-1"}
    ),
    "delete": lambda c, w: c.delete(f"/api/v1/posts/{w['post_id']}", headers=w["ada"].auth),
    "follow": lambda c, w: c.post(f"/api/v1/accounts/{w['ada'].id}/follow", headers=w["bob"].auth),
    "follow with a key": lambda c, w: c.post(
        f"/api/v1/accounts/{w['ada'].id}/follow",
        headers={**w["bob"].auth, "Idempotency-Key": "k-3"},
    ),
    # ada follows carl from the start (the world fixture), so this unfollow changes something
    "unfollow": lambda c, w: c.delete(
        f"/api/v1/accounts/{w['carl'].id}/follow", headers=w["ada"].auth
    ),
    "vote": lambda c, w: c.put(
        f"/api/v1/posts/{w['post_id']}/vote", json={"value": 1}, headers=w["bob"].auth
    ),
    "vote with a key": lambda c, w: c.put(
        f"/api/v1/posts/{w['post_id']}/vote",
        json={"value": 1},
        headers={**w["bob"].auth, "Idempotency-Key": "k-2"},
    ),
}


@pytest.fixture
def failing_outbox(engine):
    """A trigger that makes every outbox insert fail inside PostgreSQL, after the rows went in."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION fail_outbox() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'outbox unavailable'; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox "
                "FOR EACH ROW EXECUTE FUNCTION fail_outbox()"
            )
        )
    yield
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER fail_outbox ON outbox"))
        conn.execute(text("DROP FUNCTION fail_outbox()"))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_when_writing_the_events_fails_the_rows_are_not_written(
    command, client, engine, world, failing_outbox
):
    before = snapshot(engine)

    r = COMMANDS[command](client, world)

    assert r.status_code == 500
    assert r.mimetype == "application/problem+json"
    assert "outbox" not in r.get_data(as_text=True)  # no internal detail leaks
    assert snapshot(engine) == before


#: Commands that write their rows and events in one statement, which commits by itself: there is
#: no moment between the writes and the commit for a process to die in (UnitOfWork).
SINGLE_STATEMENT = {"publish", "vote", "follow", "unfollow"}
IN_A_TRANSACTION = sorted(set(COMMANDS) - SINGLE_STATEMENT)


@pytest.mark.parametrize("command", IN_A_TRANSACTION)
def test_when_the_commit_never_happens_neither_rows_nor_events_exist(
    command, client, engine, world, monkeypatch
):
    before = snapshot(engine)

    def crash_before_commit(uow: UnitOfWork) -> None:
        uow.flush_events()  # rows and events are both written in the open transaction...
        raise RuntimeError("process died before COMMIT")  # ...and it never commits

    monkeypatch.setattr(UnitOfWork, "commit", crash_before_commit)
    r = COMMANDS[command](client, world)

    assert r.status_code == 500
    assert snapshot(engine) == before


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_without_a_failure_the_same_commands_write_rows_and_events(command, client, engine, world):
    before = snapshot(engine)

    r = COMMANDS[command](client, world)

    assert r.status_code in (200, 201, 204)
    after = snapshot(engine)
    assert len(after["outbox"]) == len(before["outbox"]) + 1
    assert after != before


@pytest.fixture
def listener(settings):
    """A connection LISTENing where the relay does."""
    conn = listen_connection(settings.database_url)
    yield conn
    conn.close()


def notified(conn, seconds: float = 2.0) -> bool:
    return any(True for _ in conn.notifies(timeout=seconds, stop_after=1))


@pytest.mark.parametrize("command", sorted(SINGLE_STATEMENT))
def test_a_single_statement_command_is_written_whole_even_if_the_process_dies_after_it(
    command, client, engine, world, listener, monkeypatch
):
    """Its statement committed by itself: a death before the answer leaves the rows *and* the
    events (a client that retries without an Idempotency-Key posts twice, as with any lost
    answer), and the relay is woken for them."""
    before = snapshot(engine)

    def die_after_the_statement(uow: UnitOfWork) -> None:
        raise RuntimeError("process died before answering")

    monkeypatch.setattr(UnitOfWork, "commit", die_after_the_statement)
    assert COMMANDS[command](client, world).status_code == 500

    after = snapshot(engine)
    (event,) = [row for row in after["outbox"] if row not in before["outbox"]]
    if command in ("follow", "unfollow"):  # the follow row went in or out with its event
        follower = world["bob"] if command == "follow" else world["ada"]
        assert event["aggregate_id"] == follower.id
        assert len(after["follows"]) - len(before["follows"]) == (1 if command == "follow" else -1)
        assert notified(listener)
        return
    (post,) = [row for row in after["posts"] if row not in before["posts"]]
    assert event["aggregate_id"] == str(post["id"])
    if command == "vote":  # the post's counters moved, the vote row went in
        assert (post["up"], post["votes_version"]) == (1, 1)
        assert len(after["votes"]) == len(before["votes"]) + 1
    assert notified(listener)


@pytest.mark.parametrize("command", IN_A_TRANSACTION)
def test_a_committed_command_wakes_the_relay_and_a_failed_one_does_not(
    command, client, world, listener, monkeypatch
):
    def crash_before_commit(uow: UnitOfWork) -> None:
        uow.flush_events()  # the events are inserted (the trigger has fired)...
        raise RuntimeError("process died before COMMIT")  # ...but nothing commits

    with monkeypatch.context() as patch:
        patch.setattr(UnitOfWork, "commit", crash_before_commit)
        assert COMMANDS[command](client, world).status_code == 500
    assert not notified(listener, 0.5)

    assert COMMANDS[command](client, world).status_code in (200, 201, 204)
    assert notified(listener)
