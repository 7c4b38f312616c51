from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from domain.exports.models import Export


class ExportRepository:
    """A user's exports: every query is scoped to the owner."""

    def __init__(self, session: Session, owner_id: int):
        self.session = session
        self.owner_id = owner_id

    def get(self, job_id: str, format: str) -> Export | None:
        return self.session.scalar(
            select(Export).where(Export.owner_id == self.owner_id, Export.job_id == job_id, Export.format == format)
        )

    def for_job(self, job_id: str) -> list[Export]:
        return list(self.session.scalars(select(Export).where(Export.owner_id == self.owner_id, Export.job_id == job_id)))

    def add(self, export: Export) -> Export:
        self.session.add(export)
        self.session.flush()
        return export

    def delete(self, export_id: str) -> None:
        self.session.execute(delete(Export).where(Export.owner_id == self.owner_id, Export.id == export_id))
