import time

from sqlalchemy import update
from sqlalchemy.orm import Session

from domain.auth.models import User
from domain.batches.models import FINAL_STATUSES, Batch
from domain.batches.repository import BatchRepository
from domain.batches.schemas import CreateBatchRequest
from domain.errors import Conflict, InvalidRequest, NotFound
from domain.files.service import usable_file
from domain.ids import new_id
from domain.runs.kinds import BATCH
from domain.runs.leases import send_to_worker
from domain.queue_client import TaskQueue
from domain.storage import Storage

SUPPORTED_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW_SECONDS = {"24h": 24 * 3600}


def create_batch(session: Session, storage: Storage, user: User, request: CreateBatchRequest) -> Batch:
    if request.endpoint != SUPPORTED_ENDPOINT:
        raise InvalidRequest(
            f"Unsupported endpoint '{request.endpoint}'; batches run '{SUPPORTED_ENDPOINT}'.",
            param="endpoint",
            code="unsupported_endpoint",
        )
    if request.completion_window not in COMPLETION_WINDOW_SECONDS:
        raise InvalidRequest(
            f"completion_window must be one of {', '.join(COMPLETION_WINDOW_SECONDS)}.", param="completion_window"
        )
    file = usable_file(session, user, request.input_file_id, purpose="batch", param="input_file_id", storage=storage)
    now = int(time.time())
    return BatchRepository(session, user.id).add(
        Batch(
            id=new_id("batch_"),
            owner_id=user.id,
            endpoint=request.endpoint,
            input_file_id=file.id,
            completion_window=request.completion_window,
            status="validating",
            user_metadata=request.metadata,
            request_total=file.report.get("requests", 0),
            request_completed=0,
            request_failed=0,
            created_at=now,
            expires_at=now + COMPLETION_WINDOW_SECONDS[request.completion_window],
            attempt=0,
        )
    )


def enqueue(session: Session, queue: TaskQueue, batch: Batch) -> None:
    """After the commit: a worker must never receive a batch it cannot read."""
    send_to_worker(session, queue, BATCH, batch.id)


def get_batch(session: Session, user: User, batch_id: str) -> Batch:
    batch = BatchRepository(session, user.id).get(batch_id)
    if batch is None:
        raise NotFound.of("batch", batch_id, param="batch_id")
    return batch


def cancel_batch(session: Session, user: User, batch_id: str) -> Batch:
    """A batch no worker has started is cancelled at once; a running one goes
    to `cancelling`, and its worker writes what is done and ends it."""
    batch = get_batch(session, user, batch_id)
    if batch.status in FINAL_STATUSES:
        raise Conflict(f"Batch '{batch_id}' already ended ({batch.status}).", param="batch_id", code="batch_not_cancellable")
    if batch.status == "cancelling":
        return batch
    now = int(time.time())
    unstarted = session.execute(
        update(Batch)
        .where(Batch.id == batch.id, Batch.status == "validating", Batch.worker.is_(None))
        .values(status="cancelled", cancelling_at=now, cancelled_at=now)
        .execution_options(synchronize_session=False)
    )
    if unstarted.rowcount != 1:
        session.execute(
            update(Batch)
            .where(Batch.id == batch.id, Batch.status.in_(("validating", "in_progress", "finalizing")))
            .values(status="cancelling", cancelling_at=now)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    session.refresh(batch)
    return batch
