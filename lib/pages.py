"""Keyset pages for every list API: newest first by (time, id), an opaque cursor, never a COUNT.

One cursor codec and one `limit` rule for the member API, the admin API and the portal pages.
"""

import base64
import binascii
import datetime as dt
import json
from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.db.models import Model, Q, QuerySet

from .errors import BadRequest

_M = TypeVar("_M", bound=Model)

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def parse_limit(value: Any, *, default: int = DEFAULT_LIMIT) -> int:
    if value in (None, ""):
        return default
    try:
        limit = int(value)
    except (TypeError, ValueError):
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest("invalid limit", fields={"limit": [f"A whole number from 1 to {MAX_LIMIT}."]})
    return limit


def _invalid_cursor() -> BadRequest:
    return BadRequest("invalid cursor", fields={"cursor": ["Invalid cursor."]})


def cursor_encode(when: dt.datetime, pk: object) -> str:
    raw = json.dumps([when.isoformat(), pk if isinstance(pk, int) else str(pk)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cursor_decode(cursor: str) -> tuple[dt.datetime, int | str]:
    try:
        when, pk = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        moment = dt.datetime.fromisoformat(when)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise _invalid_cursor() from None
    if moment.tzinfo is None or isinstance(pk, bool) or not isinstance(pk, int | str):
        raise _invalid_cursor()
    return moment, pk


def keyset_page(
    queryset: QuerySet[_M], *, time_field: str, cursor: str | None, limit: int
) -> tuple[list[_M], str | None]:
    """Returns (rows, next_cursor or None), ordered by (time_field, pk) descending."""
    queryset = queryset.order_by(f"-{time_field}", "-pk")
    if cursor:
        when, pk = cursor_decode(cursor)
        try:
            queryset = queryset.filter(Q(**{f"{time_field}__lt": when}) | Q(**{time_field: when, "pk__lt": pk}))
        except (ValueError, TypeError, ValidationError):
            raise _invalid_cursor() from None
    rows = list(queryset[: limit + 1])
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], cursor_encode(getattr(last, time_field), last.pk)
