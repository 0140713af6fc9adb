"""What the saga, wallet, notification and media endpoints answer (marshmallow, for the
OpenAPI document)."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from feed.api.schemas import IdString, Rfc3339, Uuid
from sagas.schema import STATUSES


class SagaStartedOut(Schema):
    saga_id = Uuid(required=True)
    status = fields.String(required=True)


class LedgerEntryOut(Schema):
    id = IdString(required=True)
    kind = fields.String(required=True)
    amount = fields.Integer(required=True)
    saga_id = Uuid(required=True, allow_none=True)
    counter_account = fields.String(required=True, allow_none=True)
    at = Rfc3339(required=True)


class WalletOut(Schema):
    balance = fields.Integer(required=True)
    entries = fields.List(fields.Nested(LedgerEntryOut), required=True)


class NotificationOut(Schema):
    id = IdString(required=True)
    kind = fields.String(required=True)
    payload = fields.Dict(required=True)
    created_at = Rfc3339(required=True)


class NotificationPageOut(Schema):
    items = fields.List(fields.Nested(NotificationOut), required=True)
    next_max_id = fields.String(allow_none=True, required=True)


SAGA_STATUSES = list(STATUSES)


class SagaOut(Schema):
    id = Uuid(required=True)
    type = fields.String(required=True)
    version = fields.Integer(required=True)
    status = fields.String(required=True, validate=validate.OneOf(SAGA_STATUSES))
    current_step = fields.String(required=True)
    direction = fields.String(required=True, validate=validate.OneOf(["forward", "backward"]))
    last_error = fields.String(required=True, allow_none=True)
    created_at = Rfc3339(required=True)
    updated_at = Rfc3339(required=True)


class SagaStepOut(Schema):
    step_id = Uuid(required=True)
    name = fields.String(required=True)
    kind = fields.String(required=True)
    attempt = fields.Integer(required=True)
    status = fields.String(required=True)
    error = fields.String(required=True, allow_none=True)
    command = fields.String(required=True)
    service = fields.String(required=True)
    sent_at = Rfc3339(required=True)
    replied_at = Rfc3339(required=True, allow_none=True)


class MySagaOut(SagaOut):
    steps = fields.List(fields.Nested(SagaStepOut), required=True)


class OperatorActionOut(Schema):
    operator = fields.String(required=True)
    action = fields.String(required=True)
    detail = fields.Dict(required=True, allow_none=True)
    at = Rfc3339(required=True)


class SagaHistoryOut(MySagaOut):
    operator_actions = fields.List(fields.Nested(OperatorActionOut), required=True)


class SagaPageOut(Schema):
    items = fields.List(fields.Nested(SagaOut), required=True)
    next_max_id = Uuid(allow_none=True, required=True)


class RepairOut(Schema):
    """What a repair rebuilt (or, in a dry run, would rebuild) from PostgreSQL."""

    keys_checked = fields.Integer(required=True)
    dry_run = fields.Boolean(required=True)
    changes = fields.Dict(keys=fields.String(), values=fields.Dict(), required=True)


class RetriedSagaOut(SagaOut):
    """A saga sent on again; ``repair`` when the retry asked for one."""

    repair = fields.Nested(RepairOut)


class RepairPreviewOut(Schema):
    saga = fields.Nested(SagaOut, required=True)
    repair = fields.Nested(RepairOut, required=True)


class MediaOut(Schema):
    id = Uuid(required=True)
    size = fields.Integer(required=True)
    content_type = fields.String(required=True)
