import time

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from api.auth.models import User
from api.errors import APIError, not_found
from api.files.models import File, storage_key_for
from api.files.repository import FileRepository
from api.files.upload import MultipartUpload, check_declared_length, check_purpose, multipart_boundary, receive
from api.ids import new_id
from api.storage import Storage


async def create_file(
    request: Request,
    user: User,
    storage: Storage,
    db: sessionmaker[Session],
    max_upload_bytes: int,
    idle_timeout: float,
) -> File:
    boundary = multipart_boundary(request)
    check_declared_length(request, max_upload_bytes)  # before a temp file or upload exists
    file_id = new_id("file-")
    key = storage_key_for(user.id, file_id)
    writer = storage.writer(key)
    try:
        upload = MultipartUpload(boundary, writer, max_upload_bytes)
        await receive(request, upload, idle_timeout)
        purpose = check_purpose(upload.fields.get("purpose"))
        result = upload.validation_result(purpose)
        if not result.ok:
            raise APIError(
                400,
                result.message(),
                param="file",
                code="invalid_file",
                details={
                    "error_count": result.error_count,
                    "errors": [{"line": e.line, "reason": e.reason} for e in result.errors],
                },
            )
        await run_in_threadpool(writer.commit)
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise

    file = File(
        id=file_id,
        owner_id=user.id,
        purpose=purpose,
        filename=upload.filename or "upload",
        bytes=upload.file_bytes,
        sha256=upload.sha256.hexdigest(),
        storage_key=key,
        status="processed",
        report=result.report,
        created_at=int(time.time()),
    )

    def record() -> None:
        with db() as session:
            FileRepository(session, user.id).add(file)
            session.commit()

    try:
        await run_in_threadpool(record)
    except BaseException:
        # No row, no object: a failed upload leaves nothing behind.
        await run_in_threadpool(storage.delete, key)
        raise
    return file


def get_file(session: Session, user: User, file_id: str) -> File:
    file = FileRepository(session, user.id).get(file_id)
    if file is None:
        raise not_found("file", file_id, param="file_id")
    return file


def delete_file(session: Session, storage: Storage, user: User, file_id: str) -> None:
    file = get_file(session, user, file_id)
    FileRepository(session, user.id).delete(file)
    session.commit()
    # The row goes first: a crash between the two leaves an orphan object,
    # never a file listed whose content is gone.
    storage.delete(file.storage_key)
