from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.batches.models import Batch


class BatchRepository:
    """Every query is scoped to one owner."""

    def __init__(self, session: Session, owner_id: int):
        self.session = session
        self.owner_id = owner_id

    def get(self, batch_id: str) -> Batch | None:
        return self.session.scalar(select(Batch).where(Batch.id == batch_id, Batch.owner_id == self.owner_id))

    def list(self, *, after: str | None, limit: int) -> list[Batch]:
        query = select(Batch).where(Batch.owner_id == self.owner_id)
        if after:
            query = query.where(Batch.id < after)
        return list(self.session.scalars(query.order_by(Batch.id.desc()).limit(limit)))

    def add(self, batch: Batch) -> Batch:
        self.session.add(batch)
        self.session.flush()
        return batch
