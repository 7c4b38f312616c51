"""Evaluations (extension): several models side by side on a file's held-out
items, supervised metrics per model, per-item predictions as JSONL or CSV."""

import json
from dataclasses import asdict, dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse

from api.downloads import attachment, download, download_response
from api.errors import COMMON_ERROR_RESPONSES, error_responses
from domain.evaluations import service
from domain.evaluations.repository import EvaluationRepository
from domain.sharing.service import readable_evaluation
from domain.evaluations.items import filtered_items, items_csv
from domain.evaluations.schemas import (
    CreateEvaluationRequest,
    EvaluationEstimate,
    EvaluationItem,
    EvaluationItemList,
    EvaluationList,
    EvaluationObject,
    ItemFilter,
    SetItemTagsRequest,
    predictions_csv_key,
)
from api.pagination import LimitQuery, after_query, check_cursor, list_page
from api.deps import CurrentUser, SessionDep, StateDep

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"], responses=COMMON_ERROR_RESPONSES)

_MEDIA_TYPES = {"jsonl": "application/jsonl", "csv": "text/csv; charset=utf-8"}


@router.post("", response_model=EvaluationObject, responses=error_responses(404, 409))
def create_evaluation(body: CreateEvaluationRequest, user: CurrentUser, session: SessionDep, state: StateDep) -> EvaluationObject:
    evaluation = service.create_evaluation(session, state.storage, state.settings, user, body)
    service.enqueue(session, state.queue, evaluation)
    return EvaluationObject.of(evaluation)


@router.post("/estimate", response_model=EvaluationEstimate, responses=error_responses(404))
def estimate_evaluation(body: CreateEvaluationRequest, user: CurrentUser, session: SessionDep, state: StateDep) -> dict:
    """The calls (and the judges' approximate prompt tokens) the same body would
    make as an evaluation; checked like a creation, nothing is stored or queued."""
    return service.estimate_evaluation(session, state.storage, state.settings, user, body)


@router.get("", response_model=EvaluationList)
def list_evaluations(
    user: CurrentUser,
    session: SessionDep,
    limit: LimitQuery = 20,
    after: Annotated[str | None, after_query("eval_")] = None,
    fine_tuning_job_id: str | None = None,
) -> dict:
    evaluations = EvaluationRepository(session, user.id).list(
        after=check_cursor("eval_", after), limit=limit + 1, fine_tuning_job_id=fine_tuning_job_id
    )
    return list_page(evaluations, limit, EvaluationObject.of)


@router.get("/{evaluation_id}", response_model=EvaluationObject, responses=error_responses(404))
def retrieve_evaluation(evaluation_id: str, user: CurrentUser, session: SessionDep) -> EvaluationObject:
    # Also the automatic evaluation of a fine-tune shared with the caller.
    return EvaluationObject.of(readable_evaluation(session, user, evaluation_id))


@router.post("/{evaluation_id}/cancel", response_model=EvaluationObject, responses=error_responses(404))
def cancel_evaluation(evaluation_id: str, user: CurrentUser, session: SessionDep) -> EvaluationObject:
    return EvaluationObject.of(service.cancel_evaluation(session, user, evaluation_id))


@router.get(
    "/{evaluation_id}/predictions",
    response_class=StreamingResponse,
    responses={
        200: download_response(
            "The predictions, as an attachment: JSONL, or CSV with format=csv.", "application/jsonl", "text/csv"
        ),
        **error_responses(404, 409),
    },
)
def download_predictions(
    evaluation_id: str,
    user: CurrentUser,
    session: SessionDep,
    state: StateDep,
    format: Annotated[Literal["jsonl", "csv"], Query()] = "jsonl",
):
    """One row per item: `item`, `line` (in the file), `prompt`, `reference`,
    then per model its output in a column named after the model,
    `finish_reason:{model}` and a `{metric}:{model}` column per score."""
    evaluation = service.evaluation_with_predictions(session, state.storage, user, evaluation_id)
    key = evaluation.predictions_key if format == "jsonl" else predictions_csv_key(evaluation.predictions_key)
    # Through the API even on S3: clients send their API key, which a redirect
    # to a presigned URL would not accept.
    return download(
        state.storage, key, f"{evaluation.id}-predictions.{format}", media_type=_MEDIA_TYPES[format]
    )


@dataclass
class ItemFilters:
    """The filters the items list and the items download share."""

    tag: Annotated[str | None, Query(max_length=40, description="Items with this tag (automatic or yours).")] = None
    model: Annotated[str | None, Query(max_length=255, description="Look at this model's output only.")] = None
    filter_: Annotated[ItemFilter | None, Query(alias="filter")] = None


ItemFiltersDep = Annotated[ItemFilters, Depends()]


@router.get("/{evaluation_id}/items", response_model=EvaluationItemList, responses=error_responses(404, 409))
def list_items(
    evaluation_id: str,
    user: CurrentUser,
    session: SessionDep,
    state: StateDep,
    filters: ItemFiltersDep,
    after: Annotated[int | None, Query(ge=-1, description="The last item number of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> dict:
    """Items in file order, with every model's output, scores, automatic tags
    and your tags, and the judges' judgments (docs/evaluations.md)."""
    evaluation = service.evaluation_with_predictions(session, state.storage, user, evaluation_id)
    page = []
    for item in filtered_items(session, state.storage, evaluation, **asdict(filters), after=after):
        page.append(item)
        if len(page) > limit:
            break
    data = page[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": str(data[0]["item"]) if data else None,
        "last_id": str(data[-1]["item"]) if data else None,
        "has_more": len(page) > limit,
    }


@router.put("/{evaluation_id}/items/{item}/tags", response_model=EvaluationItem, responses=error_responses(404, 409))
def set_item_tags(
    evaluation_id: str, item: int, body: SetItemTagsRequest, user: CurrentUser, session: SessionDep, state: StateDep
) -> dict:
    """Replaces your tags on one model's output of one item ([] clears them)."""
    return service.set_item_tags(session, state.storage, user, evaluation_id, item, body)


@router.get(
    "/{evaluation_id}/items/download",
    response_class=Response,
    responses={
        200: download_response("The filtered items, as an attachment: JSONL, or CSV with format=csv.",
                               "application/jsonl", "text/csv"),
        **error_responses(404, 409),
    },
)
def download_items(
    evaluation_id: str,
    user: CurrentUser,
    session: SessionDep,
    state: StateDep,
    filters: ItemFiltersDep,
    format: Annotated[Literal["jsonl", "csv"], Query()] = "jsonl",
):
    """The items the same filters list, every one of them (no pages)."""
    evaluation = service.evaluation_with_predictions(session, state.storage, user, evaluation_id)
    items = filtered_items(session, state.storage, evaluation, **asdict(filters))
    if format == "csv":
        body = items_csv(evaluation, items)
    else:
        body = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
    return Response(body, media_type=_MEDIA_TYPES[format],
                    headers={"Content-Disposition": attachment(f"{evaluation.id}-items.{format}")})
