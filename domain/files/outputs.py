"""Files the service writes for a user (a job's metrics CSV, a batch's output
and error files): stored first, then described by a File row like an upload."""

import hashlib
import time
from collections.abc import Iterable

from domain.files.models import File, storage_key_for
from domain.ids import new_id
from domain.storage import Storage


def write_output_file(storage: Storage, owner_id: int, purpose: str, filename: str, chunks: Iterable[bytes]) -> File:
    """Streams `chunks` to storage; returns the File row for the caller to add
    to its own transaction (so the row appears only with what it belongs to)."""
    file_id = new_id("file-")
    key = storage_key_for(owner_id, file_id)
    digest, size = hashlib.sha256(), 0
    with storage.writer(key) as writer:
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            writer.write(chunk)
        writer.commit()
    return File(
        id=file_id,
        owner_id=owner_id,
        purpose=purpose,
        filename=filename,
        bytes=size,
        sha256=digest.hexdigest(),
        storage_key=key,
        status="processed",
        report=None,
        created_at=int(time.time()),
    )
