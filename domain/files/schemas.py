from typing import Any, Literal

from pydantic import BaseModel

from domain.files.models import File
from domain.pagination import ListPage


class FileObject(BaseModel):
    """OpenAI's file object, plus `sha256` and the validation `report` (extensions)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None = None
    expires_at: int | None = None
    sha256: str
    report: dict[str, Any] | None = None

    @classmethod
    def of(cls, file: File) -> "FileObject":
        return cls(
            id=file.id,
            bytes=file.bytes,
            created_at=file.created_at,
            filename=file.filename,
            purpose=file.purpose,
            status=file.status,
            sha256=file.sha256,
            report=file.report,
        )


# POST /v1/files reads its multipart body itself; this is what it accepts.
UPLOAD_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "JSONL, one example per line."},
                    "purpose": {"type": "string", "enum": ["fine-tune", "batch"]},
                },
                "required": ["file", "purpose"],
            }
        }
    },
}


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class FileReport(BaseModel):
    id: str
    object: Literal["file.report"] = "file.report"
    purpose: str
    report: dict[str, Any]


FileList = ListPage[FileObject]
