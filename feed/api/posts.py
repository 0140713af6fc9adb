"""Posts and votes."""

from __future__ import annotations

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
from feed.api.web import authenticated, require_principal, run_command, services

blp = Blueprint("posts", __name__, description="Posts and votes")
# Schemas are built once: building one per request copies every field.
POST_OUT = PostOut()
VOTE_OUT = VoteOut()


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
                lambda post: {**POST_OUT.dump(post), "saga_id": post["saga_id"]},
                principal=principal,
            )
        cmd = commands.PublishPost(author=principal, body=data["body"])
        return run_command(
            201,
            lambda uow: commands.publish_post(uow, cmd),
            POST_OUT.dump,
            principal=principal,
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
