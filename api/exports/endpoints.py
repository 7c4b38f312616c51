"""GGUF downloads for llama.cpp and Ollama: made by a worker on the first
request (202 until ready), then served from storage like the merged weights."""

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from api.deps import CurrentUser, SessionDep, StateDep
from api.downloads import S3_REDIRECT, download, download_response
from api.errors import COMMON_ERROR_RESPONSES, APIError, error_responses
from domain.exports.gguf import (
    ARCHITECTURES,
    DEFAULT_QUANTIZATION,
    REFUSED_CODES,
    gguf_format,
    known_model_type,
    read_stage,
    unsupported_architecture_message,
)
from domain.exports.schemas import GGUFExportPending
from domain.exports.service import request_export
from domain.runs.kinds import EXPORT
from domain.runs.leases import send_to_worker
from domain.sharing.service import readable_job

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"], responses=COMMON_ERROR_RESPONSES)

_GGUF_ZIP = download_response(
    "A zip (stored) of `<name>.gguf`, an Ollama `Modelfile` and a README.md, as an attachment.",
    "application/octet-stream",
)


@router.get(
    "/{job_id}/gguf",
    response_class=Response,
    responses={
        200: _GGUF_ZIP,
        202: {"model": GGUFExportPending, "description": "Being exported; ask again after Retry-After seconds."},
        **S3_REDIRECT,
        **error_responses(404, 409, 422),
    },
)
def download_gguf(
    job_id: str,
    user: CurrentUser,
    session: SessionDep,
    state: StateDep,
    quantization: Annotated[Literal["f16", "q8_0", "q4_k_m"], Query()] = DEFAULT_QUANTIZATION,
    retry: Annotated[bool, Query(description="Make a failed export anew.")] = False,
):
    """Extension: the fine-tune as a GGUF file for llama.cpp and Ollama (the
    tokenizer and chat template in its metadata), with an Ollama Modelfile.
    f16 and q8_0 are written directly, q4_k_m by llama.cpp's quantizer. Made
    by a worker on the first request (202 with its status and stage until
    ready), then kept. A failed export answers with its error (422 when the
    model cannot be exported at all) until asked again with retry=true."""
    job = readable_job(session, user, job_id)  # the owner's, or shared with the caller
    if job.status != "succeeded" or not job.adapter_key:
        raise APIError(409, f"Job '{job_id}' is {job.status}; a GGUF export exists once it succeeds.", code="adapter_not_ready")
    model_type = known_model_type(session, state.settings, job)
    if model_type is not None and model_type not in ARCHITECTURES:
        raise APIError(422, unsupported_architecture_message(model_type, job.model), code="unsupported_architecture")
    export, queued = request_export(session, job, gguf_format(quantization), retry_failed=retry)
    if export.status == "ready" and export.storage_key:
        return download(state.storage, export.storage_key, f"{job.id}-{quantization}.gguf.zip", redirect_s3=True)
    if export.status == "failed":
        code, _, message = (export.error or "export_failed: The export failed.").partition(": ")
        status = 422 if code in REFUSED_CODES else 409
        again = "" if status == 422 else " Ask again with retry=true to make it anew."
        raise APIError(status, f"The {quantization} GGUF export failed: {message}{again}", code=code, param="quantization")
    if queued:
        send_to_worker(session, state.queue, EXPORT, export.id)
    stage = read_stage(state.storage, export.id) if export.status == "running" else None
    body = GGUFExportPending(
        job_id=job.id,
        quantization=quantization,
        status=export.status,
        stage=(stage or {}).get("stage"),
        message=f"Exporting the fine-tune as a {quantization} GGUF; ask again shortly.",
    )
    return JSONResponse(status_code=202, content=body.model_dump(), headers={"Retry-After": "5"})
