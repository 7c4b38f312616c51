"""OpenAI-style cursor lists: {"object": "list", "data", "first_id", "last_id", "has_more"}."""

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

Item = TypeVar("Item")


class ListPage(BaseModel, Generic[Item]):
    object: Literal["list"] = "list"
    data: list[Item]
    first_id: str | None
    last_id: str | None
    has_more: bool


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
