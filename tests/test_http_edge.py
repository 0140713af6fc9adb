"""Findings at the HTTP edge (issue 28): a token is checked before anything else, every read and
every method is limited, metrics labels stay bounded, the operations endpoints are cheap, the
limits hold behind a reverse proxy, query numbers are ASCII, and links do not trust ``Host``."""

from __future__ import annotations

import io
import socket
import uuid

import pytest
from sqlalchemy import event

from app import create_app
from sagas.bootstrap import build_services
from tests.proxy import HangingProxy

JUNK = {"Authorization": "Bearer junk"}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
def edge(settings, clean_state):
    """The app with some settings changed (rate limits on unless said otherwise)."""
    apps = []

    def make(**changes):
        changes.setdefault("rate_limits_enabled", True)
        app = create_app(services=build_services(settings.with_overrides(**changes)))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["feed"].close()


def sign_up(client, handle: str) -> tuple[str, dict[str, str]]:
    """A new account's id and auth header."""
    login = {"handle": handle, "password": "correct horse battery"}
    created = client.post("/api/v1/accounts", json=login)
    assert created.status_code == 201, created.get_json()
    token = client.post("/api/v1/sessions", json=login).get_json()["token"]
    return created.get_json()["id"], {"Authorization": f"Bearer {token}"}


def statements(engine) -> list[str]:
    """A list that fills with every SQL statement the engine sends (until the test ends)."""
    seen: list[str] = []
    event.listen(engine, "after_cursor_execute", lambda *args: seen.append(args[2]))
    return seen


def test_a_bad_token_is_refused_before_any_database_work(edge):
    app = edge(rate_limits_enabled=False)
    client = app.test_client()
    ada, auth = sign_up(client, "ada_l")
    media = client.post(
        "/api/v1/media",
        data={"file": (io.BytesIO(PNG), "a.png")},
        headers=auth,
        content_type="multipart/form-data",
    ).get_json()["id"]
    client.post("/api/v1/posts", json={"body": "hello", "media_ids": [media]}, headers=auth)
    seen = statements(app.extensions["feed"].engine)

    answers = [
        client.get(f"/api/v1/accounts/{ada}", headers=JUNK),
        client.get(f"/api/v1/media/{media}", headers=JUNK),
        client.get(f"/api/v1/media/{uuid.uuid4()}", headers=JUNK),
        client.get("/api/v1/accounts/123456789", headers=JUNK),
    ]

    assert [a.status_code for a in answers] == [401] * 4
    assert all(a.mimetype == "application/problem+json" for a in answers)
    assert seen == []


def test_only_a_valid_token_leaves_the_anonymous_read_limit(edge):
    app = edge(rate_limit_anonymous_reads="3/minute")
    client = app.test_client()

    junk = [client.get("/api/v1/posts/9000", headers=JUNK).status_code for _ in range(5)]
    anonymous = client.get("/api/v1/posts/9000")

    assert junk == [401] * 3 + [429] * 2
    assert anonymous.status_code == 429  # the junk counted against the address


def test_authenticated_reads_have_a_limit_per_account(edge):
    app = edge(rate_limit_account_reads="4/minute")
    client = app.test_client()
    _, ada = sign_up(client, "ada_l")
    _, bob = sign_up(client, "bob_b")
    saga, media = uuid.uuid4(), uuid.uuid4()
    paths = ["/api/v1/wallet", "/api/v1/notifications", f"/api/v1/sagas/{saga}"]
    paths += [f"/api/v1/media/{media}", "/api/v1/timelines/home", "/api/v1/wallet"]

    statuses = [client.get(path, headers=ada).status_code for path in paths]
    other = client.get("/api/v1/wallet", headers=bob)

    assert statuses == [200, 200, 404, 404, 429, 429]
    assert other.status_code == 200


def test_a_made_up_method_is_limited_like_a_command(edge):
    app = edge(rate_limit_commands="2/minute")
    client = app.test_client()
    statuses = [client.open("/api/v1/posts", method="BREW").status_code for _ in range(3)]
    elsewhere = client.open("/nowhere", method="BREW")
    assert statuses == [405, 405, 429]
    assert elsewhere.status_code == 429  # one bucket for every path routing refuses


def test_a_made_up_method_is_one_metrics_label(edge):
    client = edge(rate_limits_enabled=False).test_client()
    method = "X" + uuid.uuid4().hex[:8].upper()
    client.open("/api/v1/posts", method=method)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert method not in metrics
    assert 'feed_http_requests_total{endpoint="unmatched",method="other",status="405"}' in metrics


def test_operations_endpoints_are_limited_per_address(edge):
    app = edge(rate_limit_anonymous_reads="3/minute")
    client = app.test_client()
    statuses = [client.get(path).status_code for path in ["/healthz", "/metrics", "/readyz"] * 2]
    assert statuses == [200, 200, 200, 429, 429, 429]


def test_every_read_documents_its_limit(client):
    document = client.get("/openapi.json").get_json()
    reads = [item["get"] for item in document["paths"].values() if "get" in item]
    assert len(reads) > 10
    assert all("429" in read["responses"] for read in reads)


def test_readiness_opens_a_broker_connection_once_in_its_interval(edge):
    proxy = HangingProxy(5672)  # RabbitMQ, through a proxy that counts connections
    try:
        app = edge(broker_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F")
        client = app.test_client()
        answers = [client.get("/readyz") for _ in range(5)]
        assert [a.status_code for a in answers] == [200] * 5
        assert proxy.accepted == 1
    finally:
        proxy.close()


def test_a_scrape_counts_sagas_and_the_outbox_once_in_its_interval(edge):
    app = edge(rate_limits_enabled=False)
    client = app.test_client()
    seen = statements(app.extensions["feed"].engine)
    first = client.get("/metrics")
    asked = list(seen)
    again = [client.get("/metrics") for _ in range(3)]

    assert first.status_code == 200 and all(a.status_code == 200 for a in again)
    assert any("GROUP BY" in s for s in asked) and any("outbox" in s for s in asked)
    assert seen == asked  # the later scrapes asked PostgreSQL nothing
    assert "feed_sagas" in again[-1].get_data(as_text=True)


def test_metrics_can_require_a_token(edge):
    client = edge(metrics_token="scrape-me").test_client()
    refused = [
        client.get("/metrics"),
        client.get("/metrics", headers={"Authorization": "Bearer wrong"}),
        client.get("/metrics", headers={"Authorization": "Bearer scrape-m\u00e9"}),
    ]
    allowed = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert [r.status_code for r in refused] == [401] * 3
    assert all(r.mimetype == "application/problem+json" for r in refused)
    assert allowed.status_code == 200 and b"feed_http_requests_total" in allowed.data


def test_behind_a_trusted_proxy_each_client_has_its_own_limits(edge):
    app = edge(trusted_proxies=1, rate_limit_anonymous_reads="2/minute")
    client = app.test_client()

    def read(forwarded_for: str) -> int:
        return client.get(
            "/api/v1/posts/9000",
            headers={"X-Forwarded-For": forwarded_for},
            environ_base={"REMOTE_ADDR": "10.0.0.2"},  # the proxy
        ).status_code

    ada = [read("198.51.100.7") for _ in range(3)]
    bob = read("203.0.113.9")
    spoofed = read("192.0.2.1, 198.51.100.7")  # only the hop the proxy added is believed

    assert ada == [404, 404, 429]
    assert bob == 404
    assert spoofed == 429


def test_without_trusted_proxies_x_forwarded_for_is_ignored(edge):
    client = edge(rate_limit_anonymous_reads="2/minute").test_client()
    statuses = [
        client.get("/api/v1/posts/9000", headers={"X-Forwarded-For": f"192.0.2.{i}"}).status_code
        for i in range(3)
    ]
    assert statuses == [404, 404, 429]


def test_a_query_number_in_other_digits_is_400(edge):
    app = edge(rate_limits_enabled=False)
    client = app.test_client()
    ada, auth = sign_up(client, "ada_l")
    app.test_cli_runner().invoke(args=["accounts", "make-admin", "ada_l"])
    for value in ["²", "١٢", "٣", "3\u200b", "+3", " 3"]:
        for path in [
            f"/api/v1/timelines/home?limit={value}",
            f"/api/v1/accounts/{ada}/posts?max_id={value}",
            f"/api/v1/notifications?since_id={value}",
            f"/api/v1/admin/sagas?limit={value}",
        ]:
            answer = client.get(path, headers=auth)
            assert answer.status_code == 400, (path, answer.status_code)
            assert answer.mimetype == "application/problem+json"
            assert list(answer.get_json()["errors"]) == [path.split("?")[1].split("=")[0]]


def test_links_are_built_from_the_public_base_url_never_from_host(edge):
    app = edge(rate_limits_enabled=False, public_base_url="https://feed.example/social")
    client = app.test_client()
    ada, auth = sign_up(client, "ada_l")
    for body in ("one", "two"):
        client.post("/api/v1/posts", json={"body": body}, headers=auth)

    page = client.get(f"/api/v1/accounts/{ada}/posts?limit=1", headers={"Host": "evil.example"})

    assert page.headers["Link"].startswith(
        f"<https://feed.example/social/api/v1/accounts/{ada}/posts?limit=1&max_id="
    )


def test_metrics_can_have_a_port_of_their_own(edge):
    with socket.create_server(("127.0.0.1", 0)) as metrics_socket:
        port = metrics_socket.getsockname()[1]
        client = edge(metrics_port=port).test_client()
        on_its_port = {"gunicorn.socket": metrics_socket}  # as gunicorn gives it to the app

        scraped = client.get("/metrics", environ_base=on_its_port)
        elsewhere = client.get("/metrics", headers={"Host": f"localhost:{port}"})
        no_api_there = client.get("/healthz", environ_base=on_its_port)

    assert scraped.status_code == 200 and b"feed_http_requests_total" in scraped.data
    assert elsewhere.status_code == 404  # the port the client wrote in Host does not count
    assert no_api_there.status_code == 404
