"""Posts and votes."""

from __future__ import annotations

import json
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from feed import commands
from feed.api.schemas import (
    CastVoteIn,
    PendingPostOut,
    PostOut,
    ProblemOut,
    PublishPostIn,
    VoteOut,
)
from feed.api.web import StoredForm, authenticated, require_principal, run_command, services
from feed.clock import rfc3339
from feed.readmodel import post_document, render_post

blp = Blueprint("posts", __name__, description="Posts and votes")
# Schemas are built once: building one per request copies every field.
VOTE_OUT = VoteOut()
# A rendered answer is kept for Idempotency-Key replays as its text (a JSON string), so a
# replay is the first answer byte for byte. Records of older versions hold the JSON object.
AS_RENDERED = StoredForm(
    keep=bytes.decode, restore=lambda body: body.encode() if isinstance(body, str) else body
)


def post_answer(post: dict[str, Any]) -> bytes:
    """A command's answer about a post (``PostOut``), rendered as a read renders one."""
    author = post["author"]
    document = post_document(
        post_id=post["id"],
        author_id=author["id"],
        author_handle=author["handle"],
        author_display_name=author["display_name"],
        body=post["body"],
        media=post["media"],
        created_at=rfc3339(post["created_at"]),
        status=post["status"],
    )
    return render_post(document, post["up"], post["down"], post["my_vote"])


def pending_answer(post: dict[str, Any]) -> bytes:
    """``PendingPostOut``: the post's answer and the id of the saga that publishes it."""
    return post_answer(post)[:-1] + b',"saga_id":%s}' % json.dumps(post["saga_id"]).encode()


@blp.route("/posts")
class Posts(MethodView):
    @authenticated
    @blp.arguments(PublishPostIn())
    @blp.response(201, PostOut, description="Published")
    @blp.alt_response(
        202, schema=PendingPostOut, description="With media: pending while moderation runs"
    )
    @blp.alt_response(422, schema=ProblemOut, description="A field is not valid")
    def post(self, data):
        """Publish a post."""
        principal = require_principal()
        if data["media_ids"]:
            with_media = commands.PublishWithMedia(
                principal, data["body"], tuple(data["media_ids"])
            )
            publish = services().handler_for(with_media)
            return run_command(
                202,
                lambda uow: publish(uow, with_media),
                pending_answer,
                principal=principal,
                stored_form=AS_RENDERED,
            )
        cmd = commands.PublishPost(author=principal, body=data["body"])
        return run_command(
            201,
            lambda uow: commands.publish_post(uow, cmd),
            post_answer,
            principal=principal,
            stored_form=AS_RENDERED,
            single_statement=True,
        )


@blp.route("/posts/<id:post_id>")
class Post(MethodView):
    @authenticated
    @blp.response(204)
    @blp.alt_response(403, schema=ProblemOut, description="Not the author or an admin")
    @blp.alt_response(404, schema=ProblemOut, description="No such post")
    def delete(self, post_id):
        """Delete a post (its author or an admin)."""
        principal = require_principal()
        cmd = commands.DeletePost(actor=principal, post_id=post_id)
        return run_command(
            204, lambda uow: commands.delete_post(uow, cmd), lambda _: None, principal=principal
        )


@blp.route("/posts/<id:post_id>/vote")
class Vote(MethodView):
    @authenticated
    @blp.arguments(CastVoteIn())
    @blp.response(200, VoteOut)
    @blp.alt_response(404, schema=ProblemOut, description="No such post")
    def put(self, data, post_id):
        """Vote on a post: 1 up, -1 down, 0 to clear. One vote per account per post."""
        principal = require_principal()
        cmd = commands.CastVote(voter=principal, post_id=post_id, value=data["value"])
        return run_command(
            200,
            lambda uow: commands.cast_vote(uow, cmd),
            VOTE_OUT.dump,
            principal=principal,
            single_statement=True,
        )
