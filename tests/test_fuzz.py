"""Schemathesis drives every documented endpoint with generated input: never a 500, and every
error is problem+json.

(Schemathesis's own pytest plugin does not load under this pytest, so its strategies are run
through hypothesis directly.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.test_operations import IMPLEMENTED

QUERIES = [
    ("get", "/timelines/home"),
    ("get", "/accounts/{id}/posts"),
    ("get", "/posts/{id}"),
    ("get", "/accounts/{id}"),
]


@pytest.fixture
def caller(make_account, client):
    """A logged-in account with one post, so authenticated endpoints get past 401."""
    account = make_account("fuzzer")
    client.post("/api/v1/posts", json={"body": "target"}, headers=account.auth)
    return account


def operations(app):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    return {
        (op.method.lower(), op.path): op
        for op in (result.ok() for result in schema.get_all_operations())
    }


@pytest.mark.parametrize(("method", "path"), IMPLEMENTED + QUERIES)
def test_generated_requests_never_get_a_server_error(app, caller, method, path):
    by_route = {(m, p.replace("/api/v1", "")): op for (m, p), op in operations(app).items()}
    (operation,) = [
        op
        for (m, p), op in by_route.items()
        if m == method and p.replace("{account_id}", "{id}").replace("{post_id}", "{id}") == path
    ]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
    )
    def check(case):
        response = case.call(headers=caller.auth)
        assert response.status_code < 500, (case.method, case.formatted_path, response.text)
        if response.status_code >= 400:
            assert response.headers["content-type"] == ["application/problem+json"]
            problem = response.json()
            assert problem["status"] == response.status_code
            assert {"type", "title", "detail"} <= set(problem)

    check()
