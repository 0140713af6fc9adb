"""What API.md says of every operation, written into the OpenAPI document in one place rather
than on each view: the problems each kind of route can answer, bearer security, the
``Idempotency-Key`` and ``X-Consistency-Token`` headers, operation ids, and the links from a
created resource to what reads or acts on it (which clients and stateful tests follow)."""

from __future__ import annotations

from typing import Any

from apispec import BasePlugin
from flask import Flask

from feed.api.schemas import ProblemOut
from feed.api.web import CONSISTENCY_HEADER, IDEMPOTENCY_HEADER

PROBLEM = "application/problem+json"
COMMANDS = frozenset({"post", "put", "delete"})
API_PREFIX = "/api/v1/"

# API.md's table of statuses, the generic reason for each.
PROBLEMS = {
    400: "The body is not JSON, or a query parameter or header is malformed",
    401: "No token, or a bad, expired or revoked one",
    403: "Authenticated, but not allowed",
    404: "No such object (or one the caller may not know exists)",
    409: "A conflict: the same Idempotency-Key is still in flight",
    413: "The body is over its limit",
    422: "Validation failed, or an Idempotency-Key reused with another request",
    429: "Rate limited: Retry-After says when to try again",
    503: "A dependency the request needs is down: Retry-After says when to try again",
}

# (operation id, status) -> {link name: (target operation id, {parameter: expression})}
LINKS: dict[tuple[str, int], dict[str, tuple[str, dict[str, str]]]] = {
    ("postAccounts", 201): {
        "GetAccount": ("getAccountItem", {"account_id": "$response.body#/id"}),
        "GetAccountPosts": ("getAccountPosts", {"account_id": "$response.body#/id"}),
        "Follow": ("postFollow", {"account_id": "$response.body#/id"}),
        "Unfollow": ("deleteFollow", {"account_id": "$response.body#/id"}),
        "Credit": ("postAdminCredit", {"account_id": "$response.body#/id"}),
    },
    ("postSessions", 200): {
        "GetAccount": ("getAccountItem", {"account_id": "$response.body#/account/id"}),
    },
    ("postPosts", 201): {
        "GetPost": ("getPostItem", {"post_id": "$response.body#/id"}),
        "Vote": ("putVote", {"post_id": "$response.body#/id"}),
        "Promote": ("postPromote", {"post_id": "$response.body#/id"}),
        "DeletePost": ("deletePost", {"post_id": "$response.body#/id"}),
    },
    # A post with media is readable once its saga published it: until then, its saga.
    ("postPosts", 202): {
        "GetSaga": ("getMySaga", {"saga_id": "$response.body#/saga_id"}),
    },
    ("postMedia", 201): {
        "GetMedia": ("getMediaFile", {"media_id": "$response.body#/id"}),
    },
    ("postPromote", 202): {
        "GetSaga": ("getMySaga", {"saga_id": "$response.body#/saga_id"}),
        "GetSagaHistory": ("getAdminSaga", {"saga_id": "$response.body#/saga_id"}),
        "Retry": ("postAdminRetry", {"saga_id": "$response.body#/saga_id"}),
        "Abort": ("postAdminAbort", {"saga_id": "$response.body#/saga_id"}),
    },
}


class ApiConventions(BasePlugin):
    """An apispec plugin: each operation flask-smorest documents is completed here."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def init_spec(self, spec) -> None:
        self.spec = spec
        spec.components.schema("Problem", schema=ProblemOut)  # before any view names it
        spec.components.header(
            "RetryAfter",
            {"description": "Seconds to wait", "required": True, "schema": {"type": "integer"}},
        )
        spec.components.header(
            CONSISTENCY_HEADER,
            {
                "description": "Send it on a read to see this command's effect",
                "required": True,
                "schema": {"type": "string"},
            },
        )
        spec.components.parameter(
            IDEMPOTENCY_HEADER,
            "header",
            {
                "description": "The same key with the same request within 24 h answers the "
                "first response again and does nothing twice",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            },
        )

    def operation_helper(self, path=None, operations=None, **kwargs: Any) -> None:
        rule = kwargs["rule"]
        view = self.app.view_functions[rule.endpoint]
        view_class = getattr(view, "view_class", None)
        for method, operation in operations.items():
            handler = getattr(view_class, method) if view_class else view
            name = view_class.__name__ if view_class else view.__name__
            operation["operationId"] = method + name[0].upper() + name[1:]
            if path.startswith(API_PREFIX):
                self._complete(path, method, operation, getattr(handler, "needs_token", False))
            elif method == "get":  # the operations endpoints: limited like any read
                _document_problems(operation, {429})
            for (operation_id, status), links in LINKS.items():
                if operation["operationId"] == operation_id:
                    _by_status(operation)[str(status)]["links"] = {
                        link: {"operationId": target, "parameters": parameters}
                        for link, (target, parameters) in links.items()
                    }

    def _complete(self, path: str, method: str, operation: dict, needs_token: bool) -> None:
        responses = _by_status(operation)
        parameters = operation.setdefault("parameters", [])
        statuses = {503}
        operation["security"] = [{"bearerAuth": []}] if needs_token else [{}, {"bearerAuth": []}]
        statuses.add(401)  # a bad token is refused even where none is needed
        if "{" in path:
            statuses.add(404)
        if path.startswith(API_PREFIX + "admin/"):
            statuses.add(403)
        if method in COMMANDS:
            statuses |= {409, 422, 429}
            parameters.append(IDEMPOTENCY_HEADER)
            for status, response in responses.items():
                if status.startswith("2"):
                    response.setdefault("headers", {})[CONSISTENCY_HEADER] = CONSISTENCY_HEADER
        if method in {"post", "put"}:
            statuses |= {400, 413}
        if any(p.get("in") == "query" for p in parameters if isinstance(p, dict)):
            statuses |= {400, 422}
        if any(p.get("name") == CONSISTENCY_HEADER for p in parameters if isinstance(p, dict)):
            statuses.add(400)
        if method == "get":
            statuses.add(429)  # reads are limited per address, or per account with a token
        _document_problems(operation, statuses)


def _document_problems(operation: dict, statuses: set[int]) -> None:
    """Add the generic answer of each of ``statuses`` the operation does not describe, and
    make every error's content problem+json."""
    responses = _by_status(operation)
    for status in statuses:
        responses.setdefault(str(status), {"description": PROBLEMS[status]})
    for status, response in list(responses.items()):
        if isinstance(response, str):  # flask-smorest's generic one (422 on a body)
            response = responses[status] = {"description": PROBLEMS[int(status)]}
        if int(status) >= 400:
            response["content"] = {PROBLEM: {"schema": "Problem"}}
            if int(status) in (429, 503):
                response.setdefault("headers", {})["Retry-After"] = "RetryAfter"


def _by_status(operation: dict) -> dict:
    """The operation's responses keyed by strings (flask-smorest uses ints)."""
    operation["responses"] = {str(k): v for k, v in operation.get("responses", {}).items()}
    return operation["responses"]
