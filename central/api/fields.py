"""Input field types shared by the routers: text PostgreSQL can store, checked at the edge;
keyset page cursors."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import HTTPException
from pydantic import AfterValidator


def _storable_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and lone surrogates are not UTF-8: refused here they are
    # a 422 naming the field, instead of a driver error deep in a query.
    if any(ch < " " or ch == "\x7f" for ch in value):
        raise ValueError("must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


Text = Annotated[str, AfterValidator(_storable_text)]


def decode_cursor(before: str | None) -> tuple[datetime, UUID] | None:
    """A ``before`` cursor from a previous page: (time, id) of its last row."""
    if before is None:
        return None
    try:
        when, row_id = base64.urlsafe_b64decode(before.encode()).decode().split("|")
        return datetime.fromisoformat(when), UUID(row_id)
    except ValueError:
        raise HTTPException(422, "before: not a cursor from a previous page") from None


def next_cursor(rows: list[dict[str, Any]], limit: int, time_key: str) -> str | None:
    """The cursor for the page after ``rows`` (newest first), or None on the last page."""
    if len(rows) < limit:
        return None
    last = rows[-1]
    return base64.urlsafe_b64encode(f"{last[time_key].isoformat()}|{last['id']}".encode()).decode()
