"""A job's history: the events OpenAI's event list shows, and the per-step
metrics the training curves are drawn from."""

import time

from sqlalchemy.orm import Session

from domain.ids import new_id
from domain.jobs.models import FineTuningEvent


def add_event(
    session: Session, job_id: str, message: str, *, level: str = "info", type: str = "message", data: dict | None = None
) -> FineTuningEvent:
    event = FineTuningEvent(
        id=new_id("ft-event-"),
        job_id=job_id,
        created_at=int(time.time()),
        level=level,
        type=type,
        message=message,
        data=data,
    )
    session.add(event)
    return event
