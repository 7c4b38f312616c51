"""The query parameters of OpenAI-style cursor lists (`limit`, `after`); the
page itself is domain/pagination.py."""

from typing import Annotated, Any

from fastapi import Query

from api.errors import bad_request
from domain.ids import id_pattern, looks_like_id
from domain.pagination import list_page

__all__ = ["LimitQuery", "after_query", "check_cursor", "list_page"]

LimitQuery = Annotated[int, Query(ge=1, le=10_000)]


def after_query(prefix: str) -> Any:
    """`after` as documented: an id of this list's objects. The pattern is
    only documented here; check_cursor enforces it, naming the problem."""
    return Query(
        description=f"The id of the last object of the previous page (`{prefix}...`).",
        json_schema_extra={"pattern": f"^{id_pattern(prefix)}$"},
    )


def check_cursor(prefix: str, after: str | None) -> str | None:
    if after is not None and not looks_like_id(prefix, after):
        raise bad_request(f"'after' must be an id starting with '{prefix}'", param="after", code="invalid_cursor")
    return after
