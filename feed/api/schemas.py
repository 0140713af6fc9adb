"""Marshmallow schemas: what a command accepts (unknown fields refused) and what it answers."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate

# \Z, not $: "$" also matches before a final newline, which would let "ada_l\n" through.
HANDLE = validate.Regexp(r"\A[a-z0-9_]{3,30}\Z", error="3 to 30 of a-z, 0-9 and _.")


def _unstorable(value: Any) -> bool:
    """True for text PostgreSQL cannot store: NUL characters, lone UTF-16 surrogates."""
    if isinstance(value, str):
        if "\x00" in value:
            return True
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, list):
        return any(_unstorable(item) for item in value)
    return False


class StrictSchema(Schema):
    """Input schemas refuse fields they do not know (``{"is_admin": true}`` is a 422) and text
    that cannot be stored."""

    class Meta:
        unknown = RAISE

    @pre_load
    def _refuse_unstorable_text(self, data: Any, **kwargs: Any) -> Any:
        if isinstance(data, dict):
            bad = {
                str(name): ["Must not contain NUL characters or unpaired surrogates."]
                for name, value in data.items()
                if _unstorable(value)
            }
            if bad:
                raise ValidationError(bad)
        return data


# What StrictSchema refuses, said in the OpenAPI document so that what it admits is accepted
# (JSON Schema cannot name unpaired surrogates, which no JSON generator sends as text).
NO_NUL = r"^[^\u0000]*$"
NOT_BLANK = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"


class Text(fields.String):
    """Input text: any characters but NUL (``StrictSchema`` refuses those)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(metadata={"pattern": NO_NUL}, **kwargs)


class NonBlank(fields.String):
    """Input text that must hold something besides white space (and no NUL)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(metadata={"pattern": NOT_BLANK}, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if not text.strip():
            raise ValidationError("Must not be blank.")
        return text


class RegisterAccountIn(StrictSchema):
    handle = fields.String(required=True, validate=HANDLE)
    password = Text(required=True, validate=validate.Length(min=8, max=256), load_only=True)
    display_name = NonBlank(validate=validate.Length(min=1, max=50))


class StartSessionIn(StrictSchema):
    handle = Text(required=True, validate=validate.Length(min=1, max=30))
    password = Text(required=True, validate=validate.Length(min=1, max=256), load_only=True)


class RefreshSessionIn(StrictSchema):
    refresh_token = Text(required=True, validate=validate.Length(min=1, max=200), load_only=True)


class ChangePasswordIn(StrictSchema):
    current_password = Text(required=True, validate=validate.Length(min=1, max=256), load_only=True)
    new_password = Text(required=True, validate=validate.Length(min=8, max=256), load_only=True)


class PublishPostIn(StrictSchema):
    body = NonBlank(required=True, validate=validate.Length(min=1, max=500))
    media_ids = fields.List(
        Text(validate=validate.Length(min=1, max=64)),
        validate=validate.Length(max=4),
        load_default=list,
    )


class StrictInteger(fields.Integer):
    """A JSON integer; ``true``/``false`` and ``"1"`` are refused (Python counts bools as ints)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("Must be an integer.")
        return super()._deserialize(value, attr, data, **kwargs)


class CastVoteIn(StrictSchema):
    value = StrictInteger(
        required=True, validate=validate.OneOf([1, -1, 0], error="Must be 1, -1 or 0.")
    )


class IdString(fields.String):
    """A 64-bit id written as a decimal string."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(metadata={"pattern": "^[0-9]+$"}, **kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else str(value)


class Rfc3339(fields.String):
    """A time as ``2026-11-26T15:04:05.123Z``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(metadata={"format": "date-time"}, **kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        from feed.clock import rfc3339

        return None if value is None else rfc3339(value)


class Uuid(fields.String):
    """A saga's, a media file's or a ledger entry's id."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(metadata={"format": "uuid"}, **kwargs)


class AccountOut(Schema):
    id = IdString(required=True)
    handle = fields.String(required=True)
    display_name = fields.String(required=True)
    created_at = Rfc3339(required=True)
    followers_count = fields.Integer(required=True)
    following_count = fields.Integer(required=True)
    posts_count = fields.Integer(required=True)


class AuthorOut(Schema):
    id = IdString(required=True)
    handle = fields.String(required=True)
    display_name = fields.String(required=True)


class AttachedMediaOut(Schema):
    id = Uuid(required=True)
    content_type = fields.String(required=True)
    size = fields.Integer(required=True)
    url = fields.String(required=True)


POST_STATUSES = ["published", "pending", "rejected", "deleted"]
VOTES = [1, -1, 0]


class PostOut(Schema):
    id = IdString(required=True)
    author = fields.Nested(AuthorOut, required=True)
    body = fields.String(required=True)
    media = fields.List(fields.Nested(AttachedMediaOut), required=True)
    created_at = Rfc3339(required=True)
    status = fields.String(required=True, validate=validate.OneOf(POST_STATUSES))
    up = fields.Integer(required=True)
    down = fields.Integer(required=True)
    score = fields.Method("_score", required=True, metadata={"type": "integer"})
    my_vote = fields.Integer(validate=validate.OneOf(VOTES))

    def _score(self, post):
        return post["up"] - post["down"]


class SessionOut(Schema):
    token = fields.String(required=True)
    expires_at = fields.String(required=True)
    refresh_token = fields.String(required=True)
    refresh_expires_at = fields.String(required=True)
    account = fields.Nested(AccountOut, required=True)


class FollowOut(Schema):
    following = fields.Boolean(required=True)


class VoteOut(Schema):
    post_id = IdString(required=True)
    up = fields.Integer(required=True)
    down = fields.Integer(required=True)
    score = fields.Method("_score", required=True, metadata={"type": "integer"})
    my_vote = fields.Integer(required=True, validate=validate.OneOf(VOTES))

    def _score(self, counts):
        return counts["up"] - counts["down"]


class ProblemOut(Schema):
    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))


class PostPageOut(Schema):
    items = fields.List(fields.Nested(PostOut), required=True)
    next_max_id = fields.String(allow_none=True, required=True)


class PendingPostOut(PostOut):
    """A post with media, answered 202 while its publish saga runs."""

    saga_id = Uuid(required=True)


class HealthOut(Schema):
    status = fields.String(required=True)


class ReadyOut(Schema):
    status = fields.String(required=True)
    checks = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
