from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from starlette.concurrency import run_in_threadpool

from api.files.upload import MultipartUpload, check_declared_length, multipart_boundary, receive
from api.downloads import BINARY_DOWNLOAD, download
from api.errors import COMMON_ERROR_RESPONSES, APIError, error_responses
from domain.files import service
from domain.files.repository import FileRepository
from domain.files.schemas import UPLOAD_REQUEST_BODY, FileDeleted, FileList, FileObject, FileReport
from api.pagination import LimitQuery, after_query, check_cursor, list_page
from api.deps import CurrentUser, CurrentUserAlone, SessionDep, StateDep

router = APIRouter(prefix="/v1/files", tags=["files"], responses=COMMON_ERROR_RESPONSES)


# The body is parsed by hand as it streams (api/files/upload.py): documented here.
@router.post(
    "", response_model=FileObject, responses=error_responses(413), openapi_extra={"requestBody": UPLOAD_REQUEST_BODY}
)
async def create_file(request: Request, user: CurrentUserAlone, state: StateDep) -> FileObject:
    """Upload a JSONL file (multipart: `file`, `purpose` = fine-tune | batch).

    The file is validated while it streams; an invalid file is refused with
    every bad line named and nothing is kept."""
    settings = state.settings
    boundary = multipart_boundary(request)
    check_declared_length(request, settings.max_upload_bytes)  # before a temp file or upload exists
    incoming = service.IncomingFile(state.storage, user.id, settings.max_upload_bytes)
    try:
        upload = MultipartUpload(boundary, incoming)
        await receive(request, upload, settings.upload_idle_timeout)
        file = await run_in_threadpool(incoming.finish, upload.fields.get("purpose"), upload.filename or "upload")
    except BaseException:
        await run_in_threadpool(incoming.abort)
        raise
    await run_in_threadpool(service.record_file, state.sessionmaker, state.storage, file)
    return FileObject.of(file)


@router.get("", response_model=FileList)
def list_files(
    user: CurrentUser,
    session: SessionDep,
    purpose: str | None = None,
    limit: LimitQuery = 100,
    after: Annotated[str | None, after_query("file-")] = None,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
) -> dict:
    files = FileRepository(session, user.id).list(
        purpose=purpose, after=check_cursor("file-", after), limit=limit + 1, newest_first=order == "desc"
    )
    return list_page(files, limit, FileObject.of)


@router.get("/{file_id}", response_model=FileObject, responses=error_responses(404))
def retrieve_file(file_id: str, user: CurrentUser, session: SessionDep) -> FileObject:
    return FileObject.of(service.get_file(session, user, file_id))


@router.get("/{file_id}/report", response_model=FileReport, responses=error_responses(404, 409))
def file_report(file_id: str, user: CurrentUser, session: SessionDep) -> FileReport:
    file = service.get_file(session, user, file_id)
    if file.report is None:
        raise APIError(409, f"File '{file_id}' has no report.", param="file_id", code="no_report")
    return FileReport(id=file.id, purpose=file.purpose, report=file.report)


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: BINARY_DOWNLOAD, **error_responses(404)},
)
def file_content(file_id: str, user: CurrentUser, session: SessionDep, state: StateDep):
    file = service.get_file(session, user, file_id)
    # Streamed through the API even on S3: SDK clients send their API key,
    # which a redirect to a presigned URL would not accept.
    return download(state.storage, file.storage_key, file.filename)


@router.delete("/{file_id}", response_model=FileDeleted, responses=error_responses(404))
def delete_file(file_id: str, user: CurrentUser, session: SessionDep, state: StateDep) -> FileDeleted:
    service.delete_file(session, state.storage, user, file_id)
    return FileDeleted(id=file_id, deleted=True)
