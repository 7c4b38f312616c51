"""Sending stored objects to clients: streamed from local disk, or for S3 either
streamed through the API or (large artifacts) a redirect to a short-lived URL."""

import tempfile
from collections.abc import Callable
from typing import IO
from urllib.parse import quote

from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse

from domain.storage import DEFAULT_CHUNK_SIZE, Storage

PRESIGNED_URL_SECONDS = 300

_ATTACHMENT_HEADER = {
    "Content-Disposition": {"description": "attachment, with the file's name", "schema": {"type": "string"}}
}


def download_response(description: str, *media_types: str) -> dict:
    """OpenAPI for a 200 that sends a stored object as these media types."""
    schema = {"type": "string", "format": "binary"}
    return {
        "description": description,
        "content": {media_type: {"schema": schema} for media_type in media_types},
        "headers": _ATTACHMENT_HEADER,
    }


BINARY_DOWNLOAD = download_response("The stored bytes, as an attachment.", "application/octet-stream")
# S3 storage answers large artifacts with a redirect to a short-lived URL.
S3_REDIRECT = {
    307: {
        "description": "On S3 storage: a redirect to a presigned URL of the object, valid for a few minutes.",
        "headers": {"Location": {"description": "The presigned URL.", "schema": {"type": "string"}}},
    }
}


def attachment(filename: str) -> str:
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


def download(
    storage: Storage,
    key: str,
    filename: str,
    *,
    redirect_s3: bool = False,
    media_type: str = "application/octet-stream",
):
    headers = {"Content-Disposition": attachment(filename)}
    local_path = storage.local_path(key)
    if local_path is not None:
        return FileResponse(local_path, media_type=media_type, headers=headers)
    if redirect_s3:
        url = storage.presigned_url(key, expires_in=PRESIGNED_URL_SECONDS, download_name=filename)
        if url:
            return RedirectResponse(url, status_code=307)
    headers["Content-Length"] = str(storage.size(key))
    return StreamingResponse(storage.iter_bytes(key), media_type=media_type, headers=headers)


def download_made(write: Callable[[IO[bytes]], None], filename: str, media_type: str = "application/octet-stream"):
    """Bytes made for this request (a stored zip re-packed, ...): written to an
    anonymous temporary file, which is gone once the answer is sent or dropped."""
    spool = tempfile.TemporaryFile()
    try:
        write(spool)
        size = spool.tell()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise

    def chunks():
        with spool:
            while chunk := spool.read(DEFAULT_CHUNK_SIZE):
                yield chunk

    headers = {"Content-Disposition": attachment(filename), "Content-Length": str(size)}
    return StreamingResponse(chunks(), media_type=media_type, headers=headers)
