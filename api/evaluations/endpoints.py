"""Evaluations (extension): several models side by side on a file's held-out
items, supervised metrics per model, per-item predictions as JSONL or CSV."""

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from api.downloads import download, download_response
from api.errors import COMMON_ERROR_RESPONSES, APIError, error_responses
from domain.evaluations import service
from domain.evaluations.repository import EvaluationRepository
from domain.sharing.service import readable_evaluation
from domain.evaluations.schemas import (
    CreateEvaluationRequest,
    EvaluationList,
    EvaluationObject,
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
    evaluation = service.get_evaluation(session, user, evaluation_id)
    if evaluation.status != "succeeded" or not evaluation.predictions_key:
        raise APIError(
            409,
            f"Evaluation '{evaluation_id}' is {evaluation.status}; its predictions exist once it succeeds.",
            param="evaluation_id",
            code="predictions_not_ready",
        )
    key = evaluation.predictions_key if format == "jsonl" else predictions_csv_key(evaluation.predictions_key)
    if not state.storage.exists(key):
        raise APIError(
            409, f"The predictions of evaluation '{evaluation_id}' are missing from storage.", code="predictions_missing"
        )
    # Through the API even on S3: clients send their API key, which a redirect
    # to a presigned URL would not accept.
    return download(
        state.storage, key, f"{evaluation.id}-predictions.{format}", media_type=_MEDIA_TYPES[format]
    )
