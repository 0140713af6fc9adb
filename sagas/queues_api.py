"""The admin API over the workers' queues: dead letters by queue, actor and error (the same
counts as ``flask dead-letters list`` and the operators' page)."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from feed.api.web import authenticated, json_response, require_admin, services
from feed.errors import DependencyDown
from workers.dead_letters import summarize

blp = Blueprint("queues", __name__, description="The workers' queues (admin)")


class DeadLetterGroupOut(Schema):
    queue = fields.String(required=True)
    actor = fields.String(required=True)
    error = fields.String(required=True, metadata={"description": "The last line of its error"})
    count = fields.Integer(required=True)


class DeadLettersOut(Schema):
    totals = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={"description": "Dead letters per queue"},
    )
    items = fields.List(fields.Nested(DeadLetterGroupOut), required=True)


def dead_letter_summary():
    """The broker's dead letters, or 503 when it cannot be reached."""
    try:
        return summarize(services().settings)
    except Exception as error:  # noqa: BLE001 - any broker client error: the broker is down
        raise DependencyDown("The message broker could not be reached.") from error


@blp.route("/admin/dead-letters")
class AdminDeadLetters(MethodView):
    @authenticated
    @blp.response(200, DeadLettersOut)
    def get(self):
        """Dead-lettered messages by queue, actor and error (admin); move them back with
        ``flask dead-letters redrive``."""
        require_admin()
        summary = dead_letter_summary()
        return json_response({"totals": summary.totals, "items": summary.as_rows()}, 200)
