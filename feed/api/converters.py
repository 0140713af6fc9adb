"""URL converters: ids in paths are positive 64-bit integers, anything else is a 404."""

from __future__ import annotations

from werkzeug.routing import BaseConverter, ValidationError

MAX_ID = 2**63 - 1


class IdConverter(BaseConverter):
    """``<id:name>``: a decimal id that fits PostgreSQL's bigint."""

    regex = r"[1-9][0-9]{0,18}"
    part_isolating = True

    def to_python(self, value: str) -> int:
        number = int(value)
        if number > MAX_ID:
            raise ValidationError()
        return number

    def to_url(self, value: int) -> str:
        return str(value)
