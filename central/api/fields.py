"""Input field types shared by the routers: text PostgreSQL can store, checked at the edge."""

from __future__ import annotations

from typing import Annotated

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
