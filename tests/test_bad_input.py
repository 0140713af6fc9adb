"""Bad input, endpoint by endpoint: a clear problem+json error naming the field, nothing written."""

from __future__ import annotations

import pytest

from tests.test_atomicity import snapshot

LONG = "x" * 501

REGISTER = [
    ({"password": "12345678"}, "handle"),
    ({"handle": "ab", "password": "12345678"}, "handle"),
    ({"handle": "x" * 31, "password": "12345678"}, "handle"),
    ({"handle": "Ada", "password": "12345678"}, "handle"),
    ({"handle": "ada-l", "password": "12345678"}, "handle"),
    ({"handle": "ada l", "password": "12345678"}, "handle"),
    ({"handle": "adä", "password": "12345678"}, "handle"),
    ({"handle": "ada_l\n", "password": "12345678"}, "handle"),
    ({"handle": "a" * 30 + "\n", "password": "12345678"}, "handle"),
    ({"handle": 123, "password": "12345678"}, "handle"),
    ({"handle": None, "password": "12345678"}, "handle"),
    ({"handle": "ada_l"}, "password"),
    ({"handle": "ada_l", "password": "1234567"}, "password"),
    ({"handle": "ada_l", "password": "x" * 257}, "password"),
    ({"handle": "ada_l", "password": 12345678}, "password"),
    ({"handle": "ada_l", "password": "12345678", "display_name": ""}, "display_name"),
    ({"handle": "ada_l", "password": "12345678", "display_name": "   "}, "display_name"),
    ({"handle": "ada_l", "password": "12345678", "display_name": "x" * 51}, "display_name"),
    ({"handle": "ada_l", "password": "12345678", "is_admin": True}, "is_admin"),
    ({"handle": "ada_l", "password": "12345678", "status": "active"}, "status"),
]

SESSIONS = [
    ({"password": "12345678"}, "handle"),
    ({"handle": "ada_l"}, "password"),
    ({"handle": "", "password": "12345678"}, "handle"),
    ({"handle": ["ada_l"], "password": "12345678"}, "handle"),
    ({"handle": "ada_l", "password": "12345678", "remember_me": True}, "remember_me"),
]

POSTS = [
    ({}, "body"),
    ({"body": ""}, "body"),
    ({"body": "   \n\t"}, "body"),
    ({"body": LONG}, "body"),
    ({"body": 42}, "body"),
    ({"body": None}, "body"),
    ({"body": "ok", "media_ids": "abc"}, "media_ids"),
    ({"body": "ok", "media_ids": [1]}, "media_ids"),
    ({"body": "ok", "media_ids": ["no-such-media"]}, "media_ids"),
    ({"body": "ok", "author_id": "1"}, "author_id"),
    ({"body": "ok", "status": "published"}, "status"),
]

VOTES = [
    ({}, "value"),
    ({"value": 2}, "value"),
    ({"value": -2}, "value"),
    ({"value": "1"}, "value"),
    ({"value": 1.5}, "value"),
    ({"value": True}, "value"),
    ({"value": None}, "value"),
    ({"value": 1, "account_id": "1"}, "account_id"),
]


def assert_validation_problem(response, field: str) -> None:
    assert response.status_code == 422, response.get_json()
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["status"] == 422 and problem["type"] and problem["title"] and problem["detail"]
    named = [key for key in problem["errors"] if key == field or key.startswith(field + ".")]
    assert named, problem
    assert all(isinstance(m, str) for key in named for m in problem["errors"][key])


@pytest.mark.parametrize(("body", "field"), REGISTER)
def test_register_refuses_bad_fields(client, engine, body, field):
    before = snapshot(engine)
    assert_validation_problem(client.post("/api/v1/accounts", json=body), field)
    assert snapshot(engine) == before


@pytest.mark.parametrize(("body", "field"), SESSIONS)
def test_sessions_refuses_bad_fields(client, engine, make_account, body, field):
    make_account("ada_l", password="12345678")
    before = snapshot(engine)
    assert_validation_problem(client.post("/api/v1/sessions", json=body), field)
    assert snapshot(engine) == before


@pytest.mark.parametrize(("body", "field"), POSTS)
def test_posts_refuses_bad_fields(client, engine, make_account, body, field):
    ada = make_account()
    before = snapshot(engine)
    assert_validation_problem(client.post("/api/v1/posts", json=body, headers=ada.auth), field)
    assert snapshot(engine) == before


@pytest.mark.parametrize(("body", "field"), VOTES)
def test_votes_refuse_bad_fields(client, engine, make_account, body, field):
    ada = make_account()
    post_id = client.post("/api/v1/posts", json={"body": "x"}, headers=ada.auth).get_json()["id"]
    before = snapshot(engine)
    r = client.put(f"/api/v1/posts/{post_id}/vote", json=body, headers=ada.auth)
    assert_validation_problem(r, field)
    assert snapshot(engine) == before


def test_a_body_of_exactly_500_characters_is_accepted(client, make_account):
    ada = make_account()
    r = client.post("/api/v1/posts", json={"body": "é" * 500}, headers=ada.auth)
    assert r.status_code == 201


BODY_ENDPOINTS = [
    ("post", "/api/v1/accounts", False),
    ("post", "/api/v1/sessions", False),
    ("post", "/api/v1/posts", True),
    ("put", "/api/v1/posts/{post_id}/vote", True),
]


@pytest.fixture
def authed(client, make_account):
    ada = make_account()
    post_id = client.post("/api/v1/posts", json={"body": "x"}, headers=ada.auth).get_json()["id"]
    return ada, post_id


@pytest.mark.parametrize(("method", "path", "needs_auth"), BODY_ENDPOINTS)
@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'{"body": "x",}', "application/json"),
        (b"\xff\xfe garbage", "application/json"),
        (b"handle=ada&password=12345678", "application/x-www-form-urlencoded"),
        (b"hello", "text/plain"),
        (b"[" * 30000 + b"]" * 30000, "application/json"),  # deeper than Python parses
        (b'{"body": ' + b"[" * 20000 + b"]" * 20000 + b"}", "application/json"),
    ],
)
def test_a_body_that_is_not_json_is_400(
    client, engine, authed, method, path, needs_auth, raw, content_type
):
    ada, post_id = authed
    before = snapshot(engine)
    headers = {"Content-Type": content_type, **(ada.auth if needs_auth else {})}

    r = getattr(client, method)(path.format(post_id=post_id), data=raw, headers=headers)

    assert r.status_code == 400, r.get_json()
    assert r.mimetype == "application/problem+json"
    assert r.get_json()["status"] == 400
    assert snapshot(engine) == before


@pytest.mark.parametrize(("method", "path", "needs_auth"), BODY_ENDPOINTS)
@pytest.mark.parametrize("payload", [[], "a string", 7, [{"body": "x"}]])
def test_json_that_is_not_an_object_is_422(client, authed, method, path, needs_auth, payload):
    ada, post_id = authed
    headers = ada.auth if needs_auth else {}
    r = getattr(client, method)(path.format(post_id=post_id), json=payload, headers=headers)
    assert r.status_code == 422
    assert r.mimetype == "application/problem+json"


@pytest.mark.parametrize(("method", "path", "needs_auth"), BODY_ENDPOINTS)
def test_a_body_over_64_kib_is_413(client, engine, authed, method, path, needs_auth):
    ada, post_id = authed
    before = snapshot(engine)
    headers = ada.auth if needs_auth else {}
    big = {"body": "x" * (65 * 1024)}

    r = getattr(client, method)(path.format(post_id=post_id), json=big, headers=headers)

    assert r.status_code == 413
    assert r.mimetype == "application/problem+json"
    assert snapshot(engine) == before


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nothing-here",
        "/api/v1/posts/abc",
        "/api/v1/posts/0",
        "/api/v1/posts/-1",
        "/api/v1/posts/99999999999999999999999",
        "/api/v1/posts/9223372036854775808",
        "/api/v1/accounts/1e5/follow",
    ],
)
def test_unknown_routes_and_ids_are_404_problems(client, authed, path):
    ada, _ = authed
    r = client.delete(path, headers=ada.auth)
    assert r.status_code == 404
    assert r.mimetype == "application/problem+json"
    assert r.get_json()["status"] == 404


def test_an_id_past_bigint_is_404_not_a_database_error(client, authed):
    ada, _ = authed
    r = client.put("/api/v1/posts/9223372036854775807/vote", json={"value": 1}, headers=ada.auth)
    assert r.status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/sessions"),
        ("put", "/api/v1/accounts"),
        ("patch", "/api/v1/posts"),
        ("get", "/api/v1/posts/1/vote"),
    ],
)
def test_a_wrong_method_is_405_with_allow(client, method, path):
    r = getattr(client, method)(path)
    assert r.status_code == 405
    assert r.mimetype == "application/problem+json"
    assert r.headers.get("Allow")


def test_problems_never_leak_internals(client, authed):
    ada, _ = authed
    r = client.post(
        "/api/v1/posts", data=b"{bad", headers={**ada.auth, "Content-Type": "application/json"}
    )
    text = r.get_data(as_text=True)
    for leak in ("Traceback", "sqlalchemy", "psycopg", "webargs", "marshmallow", 'File "'):
        assert leak not in text


def test_an_overlong_idempotency_key_is_422(client, authed):
    ada, _ = authed
    r = client.post(
        "/api/v1/posts", json={"body": "x"}, headers={**ada.auth, "Idempotency-Key": "k" * 256}
    )
    assert r.status_code == 422
    assert "Idempotency-Key" in r.get_json()["errors"]


@pytest.mark.parametrize("text", ["nul\x00byte", "lone \ud800 surrogate"])
def test_text_postgresql_cannot_store_is_422_not_500(client, engine, authed, text):
    ada, _ = authed
    before = snapshot(engine)
    register = client.post("/api/v1/accounts", json={"handle": "ok_name", "password": text * 2})
    login = client.post("/api/v1/sessions", json={"handle": text, "password": "12345678"})
    post = client.post("/api/v1/posts", json={"body": text}, headers=ada.auth)
    assert_validation_problem(register, "password")
    assert_validation_problem(login, "handle")
    assert_validation_problem(post, "body")
    assert snapshot(engine) == before
