from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.files.models import File


class FileRepository:
    """Every query is scoped to one owner: another user's file does not exist here."""

    def __init__(self, session: Session, owner_id: int):
        self.session = session
        self.owner_id = owner_id

    def get(self, file_id: str) -> File | None:
        return self.session.scalar(select(File).where(File.id == file_id, File.owner_id == self.owner_id))

    def list(self, *, purpose: str | None, after: str | None, limit: int, newest_first: bool) -> list[File]:
        query = select(File).where(File.owner_id == self.owner_id)
        if purpose:
            query = query.where(File.purpose == purpose)
        if after:
            query = query.where(File.id < after if newest_first else File.id > after)
        query = query.order_by(File.id.desc() if newest_first else File.id.asc()).limit(limit)
        return list(self.session.scalars(query))

    def add(self, file: File) -> File:
        self.session.add(file)
        self.session.flush()
        return file

    def delete(self, file: File) -> None:
        self.session.delete(file)
        self.session.flush()
