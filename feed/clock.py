"""Times as the API writes them: RFC 3339, UTC, milliseconds, ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import ColumnElement, String, func, literal_column


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """``2026-11-26T15:04:05.123Z`` for an aware datetime."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


def rfc3339_sql(moment: ColumnElement[datetime]) -> ColumnElement[str]:
    """``rfc3339`` in SQL, for a ``timestamptz`` that PostgreSQL formats itself (``MS``
    truncates to the millisecond, as ``rfc3339`` does)."""
    utc = func.timezone(literal_column("'UTC'"), moment)
    return func.to_char(utc, literal_column("""'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'"""), type_=String)
