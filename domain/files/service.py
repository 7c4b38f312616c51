"""Files: an upload becomes a stored, validated file, or nothing at all.

The bytes arrive in pieces (the HTTP layer parses the multipart body as it
streams, api/files/upload.py); `IncomingFile` takes each piece as it comes:
counts it against the limit, hashes it, validates it for its purpose and
writes it to storage, so a 1 GB upload is read once and never held whole.
"""

import hashlib
import time

from sqlalchemy.orm import Session, sessionmaker

from domain.auth.models import User
from domain.errors import Conflict, InvalidRequest, NotFound, ServiceError, TooLarge
from domain.files.models import File, storage_key_for
from domain.files.repository import FileRepository
from domain.files.validation.validators import BatchValidator, FineTuneValidator
from domain.ids import new_id
from domain.storage import Storage

PURPOSES = ("fine-tune", "batch")


def check_purpose(purpose: str | None) -> str:
    if purpose is None:
        raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter")
    if purpose not in PURPOSES:
        raise InvalidRequest(
            f"'{purpose}' is not a supported purpose; expected one of {', '.join(repr(p) for p in PURPOSES)}.",
            param="purpose",
            code="invalid_value",
        )
    return purpose


def file_too_large(limit: int) -> TooLarge:
    return TooLarge(
        f"The file is larger than this server's upload limit of {limit} bytes.", param="file", code="file_too_large"
    )


def _new_validator(purpose: str) -> FineTuneValidator | BatchValidator:
    return FineTuneValidator() if purpose == "fine-tune" else BatchValidator()


class IncomingFile:
    """One file being uploaded by `owner_id`. Blocking (hashing, validation,
    storage writes): the HTTP layer calls it from a worker thread."""

    def __init__(self, storage: Storage, owner_id: int, max_bytes: int):
        self.storage = storage
        self.owner_id = owner_id
        self.max_bytes = max_bytes
        self.id = new_id("file-")
        self.storage_key = storage_key_for(owner_id, self.id)
        self.writer = storage.writer(self.storage_key)
        self.bytes = 0
        self.sha256 = hashlib.sha256()
        self.validators: dict[str, FineTuneValidator | BatchValidator] = {}

    def expect(self, purpose: str | None) -> None:
        """Before the first byte. Clients usually send the purpose before the
        file (the openai SDK and `curl -F` in the usual order do); when it is
        not known yet, every purpose's validator runs and `finish` picks one."""
        if purpose is not None:
            self.validators = {check_purpose(purpose): _new_validator(purpose)}
        else:
            self.validators = {p: _new_validator(p) for p in PURPOSES}

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        if self.bytes > self.max_bytes:
            raise file_too_large(self.max_bytes)
        self.sha256.update(chunk)
        for validator in self.validators.values():
            validator.feed(chunk)
        self.writer.write(chunk)

    def finish(self, purpose: str | None, filename: str) -> File:
        """The file row to record, once its content is valid and stored; an
        invalid file is refused with every bad line named."""
        purpose = check_purpose(purpose)
        result = self.validators[purpose].finish()
        if not result.ok:
            raise InvalidRequest(
                result.message(),
                param="file",
                code="invalid_file",
                details={
                    "error_count": result.error_count,
                    "errors": [{"line": e.line, "reason": e.reason} for e in result.errors],
                },
            )
        self.writer.commit()
        return File(
            id=self.id,
            owner_id=self.owner_id,
            purpose=purpose,
            filename=filename,
            bytes=self.bytes,
            sha256=self.sha256.hexdigest(),
            storage_key=self.storage_key,
            status="processed",
            report=result.report,
            created_at=int(time.time()),
        )

    def abort(self) -> None:
        """Nothing of a refused or interrupted upload stays in storage."""
        self.writer.abort()


def record_file(db: sessionmaker[Session], storage: Storage, file: File) -> None:
    """Add the row of a stored file; without the row, the object goes too."""
    try:
        with db() as session:
            FileRepository(session, file.owner_id).add(file)
            session.commit()
    except BaseException:
        storage.delete(file.storage_key)
        raise


def get_file(session: Session, user: User, file_id: str) -> File:
    file = FileRepository(session, user.id).get(file_id)
    if file is None:
        raise NotFound.of("file", file_id, param="file_id")
    return file


def usable_file(
    session: Session,
    user: User,
    file_id: str,
    *,
    purpose: str,
    param: str,
    missing: type[ServiceError] = NotFound,
    storage: Storage | None = None,
) -> File:
    """The caller's file `file_id`, to be used for `purpose` by the request's
    parameter `param`. Refused, naming `param`, when no such file is the
    caller's (as a `missing`: a NotFound, or an InvalidRequest where the API
    says 400 for it), when it has another purpose or is not processed, and,
    given `storage`, when its content is gone from storage."""
    file = FileRepository(session, user.id).get(file_id)
    if file is None:
        raise missing(f"No such file: '{file_id}'", param=param, code="file_not_found")
    if file.purpose != purpose:
        raise InvalidRequest(
            f"File '{file_id}' has purpose '{file.purpose}'; {param} must be a file uploaded with purpose '{purpose}'.",
            param=param,
            code="invalid_file_purpose",
        )
    if file.status != "processed" or not file.report:
        raise InvalidRequest(
            f"File '{file_id}' is not processed yet (status '{file.status}').", param=param, code="file_not_ready"
        )
    if storage is not None and not storage.exists(file.storage_key):
        raise Conflict(f"The content of file '{file_id}' is missing from storage.", param=param, code="file_missing")
    return file


def delete_file(session: Session, storage: Storage, user: User, file_id: str) -> None:
    file = get_file(session, user, file_id)
    FileRepository(session, user.id).delete(file)
    session.commit()
    # The row goes first: a crash between the two leaves an orphan object,
    # never a file listed whose content is gone.
    storage.delete(file.storage_key)
