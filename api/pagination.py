"""OpenAI-style cursor lists: {"object": "list", "data", "first_id", "last_id", "has_more"}."""

from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Query
from pydantic import BaseModel

from api.errors import bad_request
from api.ids import id_pattern, looks_like_id

LimitQuery = Annotated[int, Query(ge=1, le=10_000)]

Item = TypeVar("Item")


class ListPage(BaseModel, Generic[Item]):
    object: Literal["list"] = "list"
    data: list[Item]
    first_id: str | None
    last_id: str | None
    has_more: bool


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


def list_page(items: list[Any], limit: int, render) -> dict[str, Any]:
    """`items` was fetched with limit + 1 rows: the extra row only says there is more."""
    has_more = len(items) > limit
    page = items[:limit]
    return {
        "object": "list",
        "data": [render(item) for item in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": has_more,
    }
