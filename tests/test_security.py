"""Findings of a security review (issue 18): admin routes authorize before they validate, the
operators' login is limited like the API's, a stranger cannot lock an account's owner out, a
token dies with its account, and every answer carries the safe headers (and Retry-After only
where it means something)."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import text

from app import create_app
from sagas.bootstrap import build_services


@pytest.fixture
def limited(settings, clean_state):
    """The app with rate limits on (a test sets them per case)."""
    apps = []

    def make(**limits):
        app = create_app(services=build_services(settings.with_overrides(**limits)))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["feed"].close()


def test_every_admin_route_answers_a_non_admin_403_whatever_the_body(client, make_account):
    someone = make_account("someone")
    saga = uuid.uuid4()
    bodies = [{"credits": "lots"}, {"unknown": 1}, None, "not json"]
    routes = [
        ("GET", "/api/v1/admin/sagas?status=nonsense", None),
        ("GET", f"/api/v1/admin/sagas/{saga}", None),
        ("GET", "/api/v1/admin/sagas/not-a-uuid", None),
        *(("POST", f"/api/v1/admin/sagas/{saga}/retry", body) for body in bodies),
        *(("POST", f"/api/v1/admin/sagas/{saga}/abort", body) for body in bodies),
        *(("POST", f"/api/v1/admin/wallets/{someone.id}/credit", body) for body in bodies),
    ]
    for method, path, body in routes:
        kwargs = {"data": body, "content_type": "text/plain"} if isinstance(body, str) else {}
        if isinstance(body, dict):
            kwargs = {"json": body}
        response = client.open(path, method=method, headers=someone.auth, **kwargs)
        assert response.status_code == 403, (method, path, body, response.get_json())
        assert response.mimetype == "application/problem+json"


def test_the_operators_login_has_the_limits_of_sessions(limited, make_account):
    app = limited(rate_limits_enabled=True, rate_limit_sessions="3/minute")
    client = app.test_client()
    client.post("/api/v1/accounts", json={"handle": "the_admin", "password": "12345678"})
    app.test_cli_runner().invoke(args=["accounts", "make-admin", "the_admin"])
    page = client.get("/admin/login").get_data(as_text=True)
    csrf = page.split('name="csrf_token" value="')[1].split('"')[0]
    statuses = [
        client.post(
            "/admin/login",
            data={"handle": "the_admin", "password": f"guess{i}", "csrf_token": csrf},
        ).status_code
        for i in range(5)
    ]
    assert statuses == [401, 401, 401, 429, 429]
    # the same buckets as the API's login: it is refused there too
    api = client.post("/api/v1/sessions", json={"handle": "the_admin", "password": "12345678"})
    assert api.status_code == 429


def test_a_stranger_cannot_lock_the_owner_out(limited):
    """Wrong passwords from one address at one handle stop that address; the owner, from
    another, logs in. (The limit per handle from anywhere is far higher, and counts failures
    only.)"""
    app = limited(rate_limits_enabled=True, rate_limit_sessions="1000/minute")
    client = app.test_client()
    client.post("/api/v1/accounts", json={"handle": "ada_l", "password": "12345678"})
    stranger = [
        client.post(
            "/api/v1/sessions",
            json={"handle": "ada_l", "password": f"guess{i:04d}"},
            environ_base={"REMOTE_ADDR": "203.0.113.9"},
        ).status_code
        for i in range(40)
    ]
    owner = client.post(
        "/api/v1/sessions",
        json={"handle": "ada_l", "password": "12345678"},
        environ_base={"REMOTE_ADDR": "198.51.100.7"},
    )
    assert stranger[0] == 401 and stranger[-1] == 429
    assert owner.status_code == 200


def test_every_answer_says_nosniff_and_retry_after_only_on_429_and_503(limited):
    app = limited(rate_limits_enabled=True)
    client = app.test_client()
    answers = [
        client.post("/api/v1/accounts", json={"handle": "ada_l", "password": "12345678"}),
        client.post("/api/v1/sessions", json={"handle": "ada_l", "password": "12345678"}),
        client.get("/api/v1/posts/1"),
        client.get("/healthz"),
        client.get("/admin/login"),
    ]
    for answer in answers:
        assert answer.headers["X-Content-Type-Options"] == "nosniff", answer.request.path
        assert "Retry-After" not in answer.headers, (answer.request.path, answer.status_code)
        assert "Strict-Transport-Security" not in answer.headers  # not behind TLS by default


def test_hsts_when_the_service_is_behind_tls(limited):
    app = limited(behind_tls=True)
    answer = app.test_client().get("/healthz")
    assert answer.headers["Strict-Transport-Security"].startswith("max-age=")


@pytest.mark.parametrize("status", ["disabled", "deleted"])
def test_a_token_dies_with_its_account(limited, status):
    """A deletion disables the account, then erases it: its tokens stop opening anything at
    once here (``ACCOUNT_STATUS_CACHE_SECONDS=0``; within that many seconds otherwise)."""
    app = limited(account_status_cache_seconds=0)
    client = app.test_client()
    client.post("/api/v1/accounts", json={"handle": "ada_l", "password": "12345678"})
    session = client.post("/api/v1/sessions", json={"handle": "ada_l", "password": "12345678"})
    auth = {"Authorization": f"Bearer {session.get_json()['token']}"}
    paths = ["/api/v1/wallet", "/api/v1/notifications", "/api/v1/timelines/home"]
    assert [client.get(path, headers=auth).status_code for path in paths] == [200] * 3
    with app.extensions["feed"].engine.begin() as conn:
        conn.execute(text("UPDATE accounts SET status = :s"), {"s": status})

    refused = [client.get(path, headers=auth) for path in paths]
    refused.append(client.post("/api/v1/posts", json={"body": "still me?"}, headers=auth))

    assert [r.status_code for r in refused] == [401] * 4
    assert all(r.mimetype == "application/problem+json" for r in refused)


def test_an_unknown_id_is_asked_of_postgresql_once_not_on_every_read(client, engine, make_account):
    from tests.test_commands import statements_seen

    ada = make_account("ada_l")
    gone = client.post("/api/v1/posts", json={"body": "soon gone"}, headers=ada.auth)
    client.delete(f"/api/v1/posts/{gone.get_json()['id']}", headers=ada.auth)
    paths = [
        "/api/v1/posts/123456789",
        f"/api/v1/posts/{gone.get_json()['id']}",
        "/api/v1/accounts/123456789",
        "/api/v1/accounts/123456790/posts",
    ]
    for path in paths:
        with statements_seen(engine) as first:
            assert client.get(path).status_code == 404
        with statements_seen(engine) as again:
            for _ in range(20):
                assert client.get(path).status_code == 404
        assert first and again == [], path


def test_anonymous_reads_are_limited_per_address(limited, make_account):
    app = limited(rate_limits_enabled=True, rate_limit_anonymous_reads="5/minute")
    client = app.test_client()
    client.post("/api/v1/accounts", json={"handle": "ada_l", "password": "12345678"})
    session = client.post("/api/v1/sessions", json={"handle": "ada_l", "password": "12345678"})
    auth = {"Authorization": f"Bearer {session.get_json()['token']}"}
    me = session.get_json()["account"]["id"]

    anonymous = [client.get(f"/api/v1/posts/{9000 + i}").status_code for i in range(7)]
    signed_in = [client.get(f"/api/v1/accounts/{me}", headers=auth).status_code for _ in range(7)]
    elsewhere = client.get("/api/v1/posts/1", environ_base={"REMOTE_ADDR": "198.51.100.7"})

    assert anonymous == [404] * 5 + [429] * 2
    assert signed_in == [200] * 7
    assert elsewhere.status_code == 404


def test_sign_ups_are_limited_per_address(limited):
    app = limited(rate_limits_enabled=True, rate_limit_signups="3/hour")
    client = app.test_client()
    statuses = [
        client.post("/api/v1/accounts", json={"handle": f"new_{i}", "password": "12345678"})
        for i in range(5)
    ]
    elsewhere = client.post(
        "/api/v1/accounts",
        json={"handle": "new_x", "password": "12345678"},
        environ_base={"REMOTE_ADDR": "198.51.100.7"},
    )
    assert [r.status_code for r in statuses] == [201, 201, 201, 429, 429]
    assert elsewhere.status_code == 201


def test_deleted_content_is_blanked_and_old_published_events_are_purged(
    app, client, engine, make_account, project_all
):
    ada = make_account("ada_l")
    secret = client.post("/api/v1/posts", json={"body": "my secret words"}, headers=ada.auth)
    client.delete(f"/api/v1/posts/{secret.get_json()['id']}", headers=ada.auth)
    project_all()
    pending = client.post("/api/v1/posts", json={"body": "not relayed yet"}, headers=ada.auth)

    def rows(sql: str) -> list:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalars().all()

    assert rows(f"SELECT body FROM posts WHERE id = {secret.get_json()['id']}") == [""]
    with engine.begin() as conn:  # eight days pass for what was published
        conn.execute(
            text(
                "UPDATE outbox SET published_at = now() - interval '8 days' "
                "WHERE published_at IS NOT NULL"
            )
        )
    result = app.test_cli_runner().invoke(args=["outbox", "purge"])

    assert result.exit_code == 0 and "purged" in result.output
    assert rows("SELECT count(*) FROM outbox WHERE payload::text LIKE '%secret%'") == [0]
    assert rows("SELECT payload->>'post_id' FROM outbox") == [pending.get_json()["id"]]


def test_a_secret_key_shorter_than_32_bytes_stops_the_start(tmp_path):
    """Issue 28: any SECRET_KEY was taken, one letter long too."""
    from feed.config import Settings

    env = {"FEED_DATA_DIR": str(tmp_path)}
    with pytest.raises(ValueError, match="SECRET_KEY"):
        Settings.from_env({**env, "SECRET_KEY": "k" * 31})
    assert Settings.from_env({**env, "SECRET_KEY": "k" * 32}).secret_key == "k" * 32
    assert len(Settings.from_env(env).secret_key) >= 32  # the one kept under the data directory


def test_each_purpose_has_its_own_key_and_what_the_old_key_signed_stays_valid(
    settings, app, client, engine, make_account
):
    """Issue 28: one SECRET_KEY signed bearer tokens, consistency tokens, the operators' session
    cookie and CSRF tokens. Now each has its own key; tokens and Idempotency-Key records made
    with SECRET_KEY itself (before the upgrade) are still accepted until they expire."""

    import jwt
    from itsdangerous import URLSafeSerializer

    from feed.idempotency import fingerprint

    ada = make_account("ada_l")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(ada.token, settings.secret_key, algorithms=["HS256"])
    keys = {app.secret_key, app.config["WTF_CSRF_SECRET_KEY"], settings.secret_key}
    keys |= {settings.signing_key(p) for p in ("tokens", "consistency-tokens", "idempotency")}
    assert len(keys) == 6

    now = int(time.time())
    claims = {"sub": ada.id, "adm": False, "iat": now, "exp": now + 60, "iss": "feed"}
    old_token = {"Authorization": "Bearer " + jwt.encode(claims, settings.secret_key, "HS256")}
    old_consistency = URLSafeSerializer(settings.secret_key, salt="consistency-token").dumps(
        {"p": 1, "a": int(ada.id), "x": now + 60}
    )
    read = client.get(
        f"/api/v1/accounts/{ada.id}", headers={**old_token, "X-Consistency-Token": old_consistency}
    )
    assert read.status_code == 200, read.get_json()

    keyed = {**ada.auth, "Idempotency-Key": "before-the-upgrade"}
    first = client.post("/api/v1/posts", json={"body": "once"}, headers=keyed)
    with engine.begin() as conn:  # the record as the old version wrote it
        conn.execute(
            text("UPDATE idempotency_keys SET fingerprint = :f"),
            {"f": fingerprint(settings.secret_key, "POST", "/api/v1/posts", {"body": "once"})},
        )
    again = client.post("/api/v1/posts", json={"body": "once"}, headers=keyed)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.get_json() == first.get_json()


def test_old_signatures_are_refused_once_turned_off(limited, make_account):

    import jwt

    app = limited(accept_legacy_signatures=False)
    client = app.test_client()
    client.post("/api/v1/accounts", json={"handle": "ada_l", "password": "12345678"})
    ada = client.post("/api/v1/sessions", json={"handle": "ada_l", "password": "12345678"})
    ada_id = ada.get_json()["account"]["id"]
    now = int(time.time())
    claims = {"sub": ada_id, "adm": False, "iat": now, "exp": now + 60, "iss": "feed"}
    secret = app.extensions["feed"].settings.secret_key
    old = {"Authorization": "Bearer " + jwt.encode(claims, secret, "HS256")}
    new = {"Authorization": "Bearer " + ada.get_json()["token"]}
    assert client.get("/api/v1/timelines/home", headers=new).status_code == 200
    assert client.get("/api/v1/timelines/home", headers=old).status_code == 401


def csrf_of(page) -> str:
    return page.get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]


def log_in_to_the_page(client, handle: str = "the_admin", password: str = "12345678"):
    form = {
        "handle": handle,
        "password": password,
        "csrf_token": csrf_of(client.get("/admin/login")),
    }
    return client.post("/admin/login", data=form)


@pytest.fixture
def operator(app, make_account):
    make_account("the_admin", password="12345678")
    app.test_cli_runner().invoke(args=["accounts", "make-admin", "the_admin"])


def test_a_page_session_cookie_taken_before_logout_opens_nothing_after(client, operator):
    """Issue 28: the cookie taken before logout still opened /admin/ for 31 days."""
    assert log_in_to_the_page(client).status_code == 302
    taken = client.get_cookie("session").value
    page = client.get("/admin/")
    assert page.status_code == 200

    out = client.post("/admin/logout", data={"csrf_token": csrf_of(page)})
    client.set_cookie("session", taken)
    again = client.get("/admin/")

    assert out.status_code == 302
    assert again.status_code == 302 and "/admin/login" in again.headers["Location"]


def test_a_page_session_ends_when_idle_and_at_its_absolute_lifetime(limited, engine, operator):
    client = limited(admin_session_idle_seconds=1, admin_session_max_seconds=60).test_client()
    log_in_to_the_page(client)
    assert client.get("/admin/").status_code == 200
    time.sleep(1.1)
    assert client.get("/admin/").status_code == 302  # idle too long

    log_in_to_the_page(client)
    assert client.get("/admin/").status_code == 200
    with engine.begin() as conn:  # a minute after the login, however busy
        conn.execute(text("UPDATE admin_sessions SET created_at = now() - interval '61 s'"))
    assert client.get("/admin/").status_code == 302


def test_behind_tls_the_page_cookie_is_secure_and_bound_to_the_host(limited, operator):
    client = limited(behind_tls=True).test_client()
    cookie = log_in_to_the_page(client).headers["Set-Cookie"]
    assert cookie.startswith("__Host-session=")
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"secure", "httponly", "path", "expires"} <= attributes
    assert "domain" not in attributes
