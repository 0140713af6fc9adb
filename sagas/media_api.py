"""Media uploads (the media service's HTTP side): POST /media, GET /media/{id}."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

from flask import request, send_file
from flask.views import MethodView
from flask_smorest import Blueprint
from flask_smorest.fields import Upload
from sqlalchemy import text
from werkzeug.exceptions import RequestEntityTooLarge

from feed.api.schemas import ProblemOut, StrictSchema
from feed.api.web import (
    authenticated,
    optional_principal,
    require_principal,
    run_command,
    services,
)
from feed.errors import NotFound
from sagas.api_schemas import MediaOut
from sagas.services.media import ALLOWED_TYPES, media_dir, store_upload

blp = Blueprint("media", __name__, description="Media uploads")
MULTIPART_OVERHEAD = 64 * 1024
UPLOAD_ENDPOINT = "media.Media"  # its body is multipart, not JSON


class MediaUploadIn(StrictSchema):
    file = Upload(required=True)


def media_sized(view: Callable[..., Any]) -> Callable[..., Any]:
    """Let the request's body be as large as an upload, before the multipart form is read."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        request.max_content_length = services().settings.media_max_bytes + MULTIPART_OVERHEAD
        return view(*args, **kwargs)

    return wrapper


@blp.route("/media")
class Media(MethodView):
    @authenticated
    @media_sized
    @blp.arguments(MediaUploadIn(), location="files")
    @blp.response(201, MediaOut)
    @blp.alt_response(413, schema=ProblemOut, description="Over 5 MiB")
    @blp.alt_response(422, schema=ProblemOut, description="Not an image or video, or over quota")
    def post(self, form):
        """Upload a file (multipart, field ``file``, at most 5 MiB); its type is sniffed."""
        principal = require_principal()
        limit = services().settings.media_max_bytes
        data = form["file"].read(limit + 1)
        if len(data) > limit:
            raise RequestEntityTooLarge("Media files are at most 5 MiB.")
        settings = services().settings
        return run_command(
            201,
            lambda uow: store_upload(uow.conn, settings, principal.account_id, data),
            lambda stored: stored,
            principal=principal,
            request_body={"sha256": hashlib.sha256(data).hexdigest()},
        )


@blp.route("/media/<uuid:media_id>")
class MediaFile(MethodView):
    @blp.doc(
        responses={
            "200": {
                "description": "The file",
                "content": {
                    kind: {"schema": {"type": "string", "format": "binary"}}
                    for kind in sorted(ALLOWED_TYPES)
                },
            }
        }
    )
    def get(self, media_id):
        """The file of media attached to a published post, for anyone; of your own upload
        (unattached, or its post pending or rejected), for you only."""
        with services().engine.connect() as conn:
            row = conn.execute(MEDIA_AND_POST, {"id": media_id}).mappings().first()
        if row is None or row["status"] == "deleted":
            raise NotFound("No such media.")
        public = row["status"] == "attached" and row["post_status"] == "published"
        if not public:
            viewer = optional_principal()
            if viewer is None or viewer.account_id != row["account_id"]:
                raise NotFound("No such media.")  # not "forbidden": whether it exists is private
        path = media_dir(services().settings) / str(row["id"])
        if not path.exists():
            raise NotFound("No such media.")
        response = send_file(path, mimetype=row["content_type"], max_age=3600)
        if not public:
            response.cache_control.public = False
            response.cache_control.private = True
        return response


MEDIA_AND_POST = text(
    "SELECT m.id, m.account_id, m.content_type, m.status, p.status AS post_status "
    "FROM media m LEFT JOIN posts p ON p.id = m.post_id WHERE m.id = :id"
)
