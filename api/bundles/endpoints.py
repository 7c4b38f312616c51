"""Reproducibility bundles (extension): a succeeded job as one zip, and a
zip like it registered here as the caller's fine-tune (domain/bundles)."""

import tempfile
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.downloads import attachment, download_response
from api.errors import COMMON_ERROR_RESPONSES, error_responses
from api.files.upload import MultipartUpload, check_declared_length, multipart_boundary, receive
from api.deps import CurrentUser, CurrentUserAlone, SessionDep, StateDep
from domain.bundles.importer import import_bundle
from domain.bundles.service import plan_bundle
from domain.bundles.writer import stream_zip
from domain.catalog.schemas import ModelObject
from domain.catalog.service import get_model
from domain.files.service import file_too_large

router = APIRouter(tags=["bundles"], responses=COMMON_ERROR_RESPONSES)

_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary", "description": "The bundle zip."}},
            }
        }
    },
}


@router.get(
    "/v1/fine_tuning/jobs/{job_id}/bundle",
    response_class=StreamingResponse,
    responses={200: download_response("The bundle zip, as an attachment.", "application/zip"),
               **error_responses(404, 409)},
)
def download_bundle(
    job_id: str,
    user: CurrentUser,
    session: SessionDep,
    state: StateDep,
    include_data: Annotated[bool, Query(description="Add the training and validation files themselves.")] = False,
):
    """Extension: everything about a succeeded job in one zip: its weights,
    recipe (JSON and YAML), model card, metrics CSV, events, automatic
    evaluation, the files' reports (and, asked for, the files), a manifest
    and SHA256SUMS. `tunehouse train --bundle` re-runs it; `tunehouse import`
    or POST /v1/models/import registers it in another deployment."""
    # Read now: the request's session closes when this returns, before the body streams.
    plan = plan_bundle(session, state.storage, state.settings, user, job_id, include_data=include_data)
    return StreamingResponse(
        stream_zip(state.storage, plan.members, plan.created_at),
        media_type="application/zip",
        headers={"Content-Disposition": attachment(plan.filename)},
    )


class _IncomingBundle:
    """The upload's `file` part into a temporary file, counted against the
    upload limit as it arrives (the zip's directory is at its end, so it is
    read only once all of it is here)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.file = tempfile.TemporaryFile()

    def expect(self, purpose: str | None) -> None:
        pass  # a bundle has no purpose field

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        if self.bytes > self.max_bytes:
            raise file_too_large(self.max_bytes)
        self.file.write(chunk)


@router.post(
    "/v1/models/import",
    response_model=ModelObject,
    responses=error_responses(413),
    openapi_extra={"requestBody": _UPLOAD_BODY},
)
async def import_model(request: Request, user: CurrentUserAlone, state: StateDep) -> ModelObject:
    """Extension: register a bundle (GET /v1/fine_tuning/jobs/{id}/bundle of
    this or another deployment) as the caller's fine-tune. Checked against its
    SHA256SUMS first: a changed, missing or added member is a 400
    `bundle_tampered` and nothing is stored; its base model must be offered here."""
    settings = state.settings
    boundary = multipart_boundary(request)
    check_declared_length(request, settings.max_upload_bytes)
    incoming = _IncomingBundle(settings.max_upload_bytes)
    try:
        await receive(request, MultipartUpload(boundary, incoming), settings.upload_idle_timeout)
        job = await run_in_threadpool(import_bundle, state.sessionmaker, state.storage, settings, user, incoming.file)
    finally:
        incoming.file.close()

    def describe() -> ModelObject:
        with state.sessionmaker() as session:
            return get_model(session, settings, user, job.fine_tuned_model)

    return await run_in_threadpool(describe)
