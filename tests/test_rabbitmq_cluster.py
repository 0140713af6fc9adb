"""The service on a 3-node RabbitMQ cluster the tests start, every node in ``BROKER_URL``, with a
real relay and real workers: posts reach followers' feeds and sagas complete; when the node the
processes are connected to is SIGKILLed, the quorum queues keep its messages and the processes go
on through a live node; and a node dying while the relay publishes a backlog costs no event (what
the broker did not confirm is sent again) and doubles none in effect."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.conftest import fetch_all
from tests.processes import Processes, eventually, process_env
from tests.readmodel_check import mismatches, register
from tests.servers import PrivateRabbitMQCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rabbitmq_cluster():
    cluster = PrivateRabbitMQCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def cluster(rabbitmq_cluster):
    """The shared cluster with its three nodes up: a node a test killed is started again."""
    rabbitmq_cluster.start_dead_nodes()
    return rabbitmq_cluster


@pytest.fixture
def processes(settings, clean_state, cluster, tmp_path):
    """Relay and workers (started by the test) whose ``BROKER_URL`` lists the three nodes. Their
    queues are left to go with the cluster: deleting a quorum queue waits for a dead member."""
    running = Processes(
        process_env(settings.database_url, settings.redis_url, cluster.url), tmp_path
    )
    yield running
    running.stop_all()


def unpublished(app) -> int:
    with app.extensions["feed"].engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        ).scalar_one()


def followers_with_live_feeds(app, count: int) -> tuple[dict, list[dict]]:
    """An author and ``count`` followers who have read their home feed (so it gets fan-out)."""
    client = app.test_client()
    author, *fans = register(client, count + 1)
    for fan in fans:
        client.post(f"/api/v1/accounts/{author['id']}/follow", headers=fan["auth"])
        client.get("/api/v1/timelines/home", headers=fan["auth"])
    return author, fans


def post(app, author: dict, body: str) -> str:
    created = app.test_client().post("/api/v1/posts", json={"body": body}, headers=author["auth"])
    assert created.status_code == 201
    return created.get_json()["id"]


def in_every_feed(app, accounts: list[dict]) -> bool:
    """Every feed and counter as PostgreSQL says, and nothing left in the outbox."""
    assert unpublished(app) == 0
    assert mismatches(app, accounts) == []
    return True


class Promotion:
    """An author with 10 credits, and readers active lately: promoting a post for 2 credits
    places it in 2 feeds."""

    def __init__(self, app) -> None:
        self.app, self.client = app, app.test_client()
        admin, self.author, *readers = register(self.client, 4)
        handle = self.client.get(f"/api/v1/accounts/{admin['id']}").get_json()["handle"]
        app.test_cli_runner().invoke(args=["accounts", "make-admin", handle])
        for reader in readers:
            self.client.get("/api/v1/timelines/home", headers=reader["auth"])  # recently active
        self.post_id = post(app, self.author, "an advertisement")
        credited = self.client.post(
            f"/api/v1/admin/wallets/{self.author['id']}/credit",
            json={"credits": 10},
            headers=admin["auth"],
        )
        assert credited.status_code == 200, credited.get_json()

    def start(self) -> str:
        promoted = self.client.post(
            f"/api/v1/posts/{self.post_id}/promote",
            json={"credits": 2},
            headers=self.author["auth"],
        )
        assert promoted.status_code == 202, promoted.get_json()
        return promoted.get_json()["saga_id"]

    def status(self, saga_id: str) -> str:
        return self.client.get(f"/api/v1/sagas/{saga_id}", headers=self.author["auth"]).get_json()[
            "status"
        ]

    def first_step_ran(self, saga_id: str) -> bool:
        """Whether the participant ran the first attempt of the saga's first step."""
        return bool(
            fetch_all(
                self.app.extensions["feed"].engine,
                "SELECT 1 FROM processed_steps p JOIN saga_steps s USING (step_id) "
                "WHERE s.saga_id = :s AND s.step_index = 0 AND s.attempt = 1",
                s=saga_id,
            )
        )

    def assert_paid_and_placed_once(self, saga_id: str) -> None:
        engine = self.app.extensions["feed"].engine
        wallet = fetch_all(
            engine, "SELECT balance FROM wallets WHERE account_id = :a", a=self.author["id"]
        )
        assert wallet == [{"balance": 8}]
        debits = fetch_all(
            engine, "SELECT * FROM ledger_entries WHERE kind = 'debit' AND saga_id = :s", s=saga_id
        )
        assert len(debits) == 1
        placed = fetch_all(
            engine,
            "SELECT p.account_id FROM campaign_placements p "
            "JOIN campaigns c ON c.id = p.campaign_id WHERE c.saga_id = :s",
            s=saga_id,
        )
        assert len(placed) == 2


def test_a_post_reaches_its_followers_feeds_through_the_cluster(app, processes):
    author, fans = followers_with_live_feeds(app, 3)
    processes.start("relay")
    processes.start("sweeper")
    processes.start("workers")

    for n in range(5):
        post(app, author, f"post {n}")

    eventually(lambda: in_every_feed(app, [author, *fans]), timeout=60, interval=0.5)


def test_a_promotion_saga_completes_through_the_cluster(app, processes):
    promotion = Promotion(app)
    processes.start("relay")
    processes.start("sweeper")
    processes.start("workers")

    saga_id = promotion.start()

    eventually(lambda: promotion.status(saga_id) == "completed", timeout=60, interval=0.5)
    promotion.assert_paid_and_placed_once(saga_id)


def test_the_node_the_processes_use_dies_its_messages_survive_and_work_goes_on(
    app, processes, cluster
):
    first, *others = cluster.nodes
    author, fans = followers_with_live_feeds(app, 3)
    promotion = Promotion(app)
    processes.start("relay")
    processes.start("sweeper")
    processes.start("workers")
    post(app, author, "before")
    eventually(lambda: in_every_feed(app, [author, *fans]), timeout=60, interval=0.5)
    # BROKER_URL names the first node first: every process is connected to it.
    assert set(first.connection_ports()) == {first.port}

    # Messages wait in the queues (the workers, frozen, acknowledge none) when the node dies.
    prefix = processes.env["FEED_QUEUE_PREFIX"]
    processes.pause("workers")
    try:
        post(app, author, "queued when the node died")
        saga_id = promotion.start()
        eventually(lambda: unpublished(app) == 0, timeout=30)
        waiting = (f"{prefix}projections.q", f"{prefix}sagas.q")
        eventually(lambda: all(first.queue_depths(prefix)[q] > 0 for q in waiting), timeout=15)
        first.kill()
    finally:
        processes.resume("workers")

    eventually(lambda: in_every_feed(app, [author, *fans]), timeout=90, interval=0.5)
    eventually(lambda: promotion.status(saga_id) == "completed", timeout=90, interval=0.5)
    post(app, author, "after")
    eventually(lambda: in_every_feed(app, [author, *fans]), timeout=30, interval=0.5)

    promotion.assert_paid_and_placed_once(saga_id)
    assert promotion.first_step_ran(saga_id)  # the step that was queued, not a later resend
    live = {node.port for node in others}
    assert others[0].connection_ports() and set(others[0].connection_ports()) <= live


BACKLOG_ACCOUNTS = 30
BACKLOG_POSTS_EACH = 70


def test_a_node_killed_while_the_relay_publishes_a_backlog_loses_and_doubles_nothing(
    app, processes, cluster
):
    client = app.test_client()
    accounts = register(client, BACKLOG_ACCOUNTS)
    for i, me in enumerate(accounts):
        client.get("/api/v1/timelines/home", headers=me["auth"])
        for step in (1, 2, 3):
            other = accounts[(i + step) % BACKLOG_ACCOUNTS]
            client.post(f"/api/v1/accounts/{other['id']}/follow", headers=me["auth"])
    for n in range(BACKLOG_POSTS_EACH):
        for me in accounts:
            post(app, me, f"post {n}")
    backlog = unpublished(app)
    assert backlog > 2_000

    processes.start("workers")
    # One event per message: thousands of broker confirms, so the node dies mid-backlog.
    processes.start("relay", {"PROJECTION_CHUNK": "1"})
    eventually(lambda: backlog - unpublished(app) >= 500, timeout=60, interval=0.01)
    cluster.nodes[0].kill()  # the relay's node, while it publishes its second batch
    assert unpublished(app) > 0

    # A message the dead node did not confirm goes out again: the broker client sends it to
    # another node at once, or, while that node still refuses it (its queues electing new
    # leaders), the relay sends the whole batch again. Either way, once in effect.
    eventually(lambda: in_every_feed(app, accounts), timeout=180, interval=1)
    prefix = processes.env["FEED_QUEUE_PREFIX"]
    dead_letters = [
        n for q, n in cluster.nodes[1].queue_depths(prefix).items() if q.endswith(".XQ")
    ]
    assert dead_letters == [0, 0, 0]
