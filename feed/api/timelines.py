"""Queries: home timeline, an account's posts, a post, an account. Served from Redis."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint

from feed import queries
from feed.api.schemas import AccountOut, PostOut, PostPageOut, ProblemOut
from feed.api.web import (
    CONSISTENCY_HEADER,
    authenticated,
    json_response,
    optional_principal,
    require_principal,
    services,
    whole_number,
)
from feed.errors import InvalidInput, MalformedQuery

blp = Blueprint("timelines", __name__, description="Feeds, posts and accounts (read models)")

READ_MODEL_HEADER = "X-Read-Model"
MAX_LIMIT = 40
CURSOR_PARAMETERS = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 40}},
    {"name": "max_id", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    {"name": "since_id", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    {"name": CONSISTENCY_HEADER, "in": "header", "schema": {"type": "string"}},
]


def parse_cursor() -> queries.Cursor:
    """``limit``, ``max_id``, ``since_id`` from the query: 400 if malformed, 422 if out of range."""
    limit = whole_number("limit", 6, "limit must be a whole number.", "Not a number.")
    if limit is None:
        limit = 20
    elif not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(
            f"limit must be 1 to {MAX_LIMIT}.", errors={"limit": [f"Must be 1 to {MAX_LIMIT}."]}
        )
    ids = {}
    for name in ("max_id", "since_id"):
        post_id = whole_number(name, 19, f"{name} must be a post id.", "Not a post id.")
        if post_id is not None and post_id >= 2**63:
            raise MalformedQuery(f"{name} must be a post id.", errors={name: ["Not a post id."]})
        if post_id is not None:
            ids[name] = post_id
    return queries.Cursor(limit=limit, **ids)


def consistency() -> dict[str, Any]:
    """What the request's consistency token asks of the read: ``position`` and ``wait`` for
    the queries (none without a token)."""
    token = request.headers.get(CONSISTENCY_HEADER)
    if not token:
        return {}
    principal = optional_principal()
    after = services().consistency.read(token, principal.account_id if principal else None)
    if after is None:  # past its hard expiry: a read like one without a token
        return {}
    return {"position": after.position, "wait": after.may_wait}


def page_response(page: queries.Page, cursor: queries.Cursor) -> Response:
    headers = {READ_MODEL_HEADER: page.source}
    if page.next_max_id:
        query = {"limit": cursor.limit, "max_id": page.next_max_id}
        # Never from the request's Host, which the client writes: from PUBLIC_BASE_URL, or a
        # reference relative to the page the client asked for.
        base = services().settings.public_base_url or request.root_path
        here = f"{base}{request.path}"
        headers["Link"] = f'<{here}?{urlencode(query)}>; rel="next"'
    return json_response(queries.render_page(page), 200, headers)


@blp.route("/timelines/home")
class HomeTimeline(MethodView):
    @authenticated
    @blp.doc(parameters=CURSOR_PARAMETERS)
    @blp.response(200, PostPageOut)
    @blp.alt_response(400, schema=ProblemOut, description="A malformed query parameter")
    @blp.alt_response(401, schema=ProblemOut, description="Not logged in")
    def get(self):
        """The caller's home feed, newest first."""
        me = require_principal().account_id
        cursor = parse_cursor()
        page = queries.home_timeline(services().store, me, cursor, **consistency())
        return page_response(page, cursor)


@blp.route("/accounts/<id:account_id>/posts")
class AccountPosts(MethodView):
    @blp.doc(parameters=CURSOR_PARAMETERS)
    @blp.response(200, PostPageOut)
    @blp.alt_response(404, schema=ProblemOut, description="No such account")
    def get(self, account_id):
        """An account's posts, newest first."""
        viewer = optional_principal()
        cursor = parse_cursor()
        page = queries.account_posts(
            services().store,
            account_id,
            viewer.account_id if viewer else None,
            cursor,
            **consistency(),
        )
        return page_response(page, cursor)


@blp.route("/posts/<id:post_id>")
class PostItem(MethodView):
    @blp.doc(parameters=CURSOR_PARAMETERS[-1:])
    @blp.response(200, PostOut)
    @blp.alt_response(404, schema=ProblemOut, description="No such post")
    def get(self, post_id):
        """One post with its current counts."""
        viewer = optional_principal()
        item = queries.get_post(
            services().store,
            post_id,
            viewer.account_id if viewer else None,
            **consistency(),
        )
        return json_response(item.value, 200, {READ_MODEL_HEADER: item.source})


@blp.route("/accounts/<id:account_id>")
class AccountItem(MethodView):
    @blp.doc(parameters=CURSOR_PARAMETERS[-1:])
    @blp.response(200, AccountOut)
    @blp.alt_response(404, schema=ProblemOut, description="No such account")
    def get(self, account_id):
        """An account with its counters."""
        item = queries.get_account(services().store, account_id, **consistency())
        return json_response(item.value, 200, {READ_MODEL_HEADER: item.source})
