from typing import Annotated, Any, Literal

import yaml
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from api.downloads import S3_REDIRECT, download, download_made, download_response
from api.errors import COMMON_ERROR_RESPONSES, APIError, error_responses
from domain.jobs import pause, service
from domain.jobs.model_card import model_card_files, write_zip_with_card
from domain.jobs.training_metrics import metrics_by_step, metrics_csv
from domain.exports.service import request_export
from domain.jobs.repository import JobRepository
from domain.jobs.weights import is_full_fine_tune, no_adapter_message
from domain.runs.kinds import EXPORT
from domain.runs.leases import send_to_worker
from domain.sharing.service import owner_name, readable_job
from domain.jobs.schemas import (
    CheckpointList,
    CheckpointObject,
    CreateJobRequest,
    EventList,
    EventObject,
    JobList,
    JobMetrics,
    JobObject,
    MergedWeightsPending,
)
from api.pagination import LimitQuery, after_query, check_cursor, list_page
from api.deps import CurrentUser, SessionDep, StateDep

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"], responses=COMMON_ERROR_RESPONSES)

_NOT_FOUND = error_responses(404)
_NOT_READY = error_responses(404, 409)
_ZIP_DOWNLOAD = download_response("The folder as a zip, as an attachment.", "application/octet-stream")


@router.post("", response_model=JobObject, responses=error_responses(409))
def create_job(body: CreateJobRequest, user: CurrentUser, session: SessionDep, state: StateDep) -> JobObject:
    job = service.create_job(session, state.storage, state.settings, user, body)
    service.enqueue(session, state.queue, job)
    return JobObject.of(job, user.name)


@router.post("/preview", response_model=dict[str, Any], responses=error_responses(409))
def preview_job(body: CreateJobRequest, user: CurrentUser, session: SessionDep, state: StateDep) -> dict:
    """Extension: what every `auto` hyperparameter of this request would
    resolve to, and why, without creating a job (the same body as create)."""
    return service.preview_hyperparameters(session, state.storage, state.settings, user, body)


def _metadata_filter(request: Request) -> dict[str, str]:
    # OpenAI's list filter: ?metadata[key]=value
    return {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.items()
        if key.startswith("metadata[") and key.endswith("]")
    }


@router.get("", response_model=JobList)
def list_jobs(
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    limit: LimitQuery = 20,
    after: Annotated[str | None, after_query("ftjob-")] = None,
) -> dict:
    jobs = JobRepository(session, user.id).list(
        after=check_cursor("ftjob-", after), limit=limit + 1, metadata=_metadata_filter(request)
    )
    return list_page(jobs, limit, lambda job: JobObject.of(job, user.name))


@router.get("/{job_id}", response_model=JobObject, responses=_NOT_FOUND)
def retrieve_job(job_id: str, user: CurrentUser, session: SessionDep) -> JobObject:
    job = readable_job(session, user, job_id)
    return JobObject.of(job, owner_name(session, job))


@router.post("/{job_id}/cancel", response_model=JobObject, responses=_NOT_FOUND)
def cancel_job(job_id: str, user: CurrentUser, session: SessionDep) -> JobObject:
    return JobObject.of(service.cancel_job(session, user, job_id), user.name)


@router.post("/{job_id}/pause", response_model=JobObject, responses=error_responses(404, 409))
def pause_job(job_id: str, user: CurrentUser, session: SessionDep) -> JobObject:
    """A queued job is paused at once; a running one saves a checkpoint of the
    step it is at and frees its worker, then shows `paused`. 409 for a job
    that has finished or is already paused."""
    return JobObject.of(pause.pause_job(session, user, job_id), user.name)


@router.post("/{job_id}/resume", response_model=JobObject, responses=error_responses(404, 409))
def resume_job(job_id: str, user: CurrentUser, session: SessionDep, state: StateDep) -> JobObject:
    """A paused job goes back to the queue and continues from the step it was
    paused at, on any worker. 409 for a job that is not paused."""
    return JobObject.of(pause.resume_job(session, state.queue, user, job_id), user.name)


@router.get("/{job_id}/events", response_model=EventList, responses=_NOT_FOUND)
def list_events(
    job_id: str,
    user: CurrentUser,
    session: SessionDep,
    limit: LimitQuery = 20,
    after: Annotated[str | None, after_query("ft-event-")] = None,
) -> dict:
    job = service.get_job(session, user, job_id)
    events = JobRepository(session, user.id).events(job.id, after=check_cursor("ft-event-", after), limit=limit + 1)
    return list_page(events, limit, EventObject.of)


@router.get("/{job_id}/checkpoints", response_model=CheckpointList, responses=_NOT_FOUND)
def list_checkpoints(
    job_id: str,
    user: CurrentUser,
    session: SessionDep,
    limit: LimitQuery = 10,
    after: Annotated[str | None, after_query("ftckpt_")] = None,
) -> dict:
    job = service.get_job(session, user, job_id)
    checkpoints = JobRepository(session, user.id).checkpoints(
        job.id, after=check_cursor("ftckpt_", after), limit=limit + 1
    )
    return list_page(checkpoints, limit, lambda c: CheckpointObject.of(c, job, user.name))


@router.get(
    "/{job_id}/metrics",
    response_model=JobMetrics,
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "JSON, or CSV with format=csv."},
        **_NOT_FOUND,
    },
)
def job_metrics(
    job_id: str,
    user: CurrentUser,
    session: SessionDep,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Any:
    """Extension: every training step's metrics, for live curves."""
    job = readable_job(session, user, job_id)
    rows = metrics_by_step(JobRepository(session, user.id).metrics_events(job.id))
    if format == "csv":
        return PlainTextResponse(metrics_csv(rows), media_type="text/csv")
    return {"object": "list", "data": rows, "total_steps": job.total_steps}


@router.get(
    "/{job_id}/recipe",
    response_model=dict[str, Any],
    responses={
        200: {
            # The same object as the JSON, written as YAML.
            "content": {"application/yaml": {"schema": {"type": "object", "additionalProperties": True}}},
            "description": "JSON, or YAML (as an attachment) with format=yaml.",
        },
        **_NOT_READY,
    },
)
def job_recipe(
    job_id: str,
    user: CurrentUser,
    session: SessionDep,
    format: Annotated[Literal["json", "yaml"], Query()] = "json",
) -> Any:
    """Extension: everything needed to report and re-run this training."""
    job = readable_job(session, user, job_id)
    if not job.recipe:
        raise APIError(
            409,
            f"Job '{job_id}' has no recipe yet: it is written once a worker has resolved the hyperparameters.",
            code="recipe_not_ready",
        )
    if format == "yaml":
        return PlainTextResponse(
            yaml.safe_dump(job.recipe, sort_keys=False, allow_unicode=True),
            media_type="application/yaml",
            headers={"Content-Disposition": f'attachment; filename="{job.id}-recipe.yaml"'},
        )
    return job.recipe


@router.get(
    "/{job_id}/adapter", response_class=Response, responses={200: _ZIP_DOWNLOAD, **_NOT_READY}
)
def download_adapter(job_id: str, user: CurrentUser, session: SessionDep, state: StateDep):
    """Extension: the PEFT adapter folder as a zip (loads with PeftModel.from_pretrained),
    with its model card (README.md, training_curves.png)."""
    job = readable_job(session, user, job_id)
    if is_full_fine_tune(job):
        raise APIError(409, no_adapter_message(job), code="full_fine_tune_has_no_adapter")
    if job.status != "succeeded" or not job.adapter_key:
        raise APIError(409, f"Job '{job_id}' is {job.status}; the adapter exists once it succeeds.", code="adapter_not_ready")
    # The stored zip with the model card as it is now (the evaluation may have finished since).
    card = model_card_files(session, state.settings, job)
    session.close()  # packing needs no database turn
    return download_made(lambda out: write_zip_with_card(state.storage, job.adapter_key, card, out), f"{job.id}-adapter.zip")


@router.get(
    "/{job_id}/merged",
    response_class=Response,
    responses={
        200: _ZIP_DOWNLOAD,
        202: {"model": MergedWeightsPending, "description": "Being merged; ask again after Retry-After seconds."},
        **S3_REDIRECT,
        **_NOT_READY,
    },
)
def download_merged(job_id: str, user: CurrentUser, session: SessionDep, state: StateDep):
    """Extension: base + adapter merged into full weights. Made by a worker on
    the first request (202 until ready), then kept in storage."""
    job = readable_job(session, user, job_id)
    if job.status != "succeeded" or not job.adapter_key:
        raise APIError(409, f"Job '{job_id}' is {job.status}; merged weights exist once it succeeds.", code="adapter_not_ready")
    export, queued = request_export(session, job, "merged")
    if export.status == "ready" and export.storage_key:
        return download(state.storage, export.storage_key, f"{job.id}-merged.zip", redirect_s3=True)
    if queued:
        send_to_worker(session, state.queue, EXPORT, export.id)
    body = {
        "object": "fine_tuning.job.merged_weights",
        "job_id": job.id,
        "status": export.status,
        "message": "Merging the adapter into the base weights; ask again shortly.",
    }
    return JSONResponse(status_code=202, content=body, headers={"Retry-After": "5"})
