from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.connections.models import Connection


class ConnectionRepository:
    """Every query is scoped to one owner: another user's connection does not exist here."""

    def __init__(self, session: Session, owner_id: int):
        self.session = session
        self.owner_id = owner_id

    def get_by_name(self, name: str) -> Connection | None:
        return self.session.scalar(
            select(Connection).where(Connection.name == name, Connection.owner_id == self.owner_id)
        )

    def list(self, *, after: str | None, limit: int) -> list[Connection]:
        """Oldest first (ids sort by creation time)."""
        query = select(Connection).where(Connection.owner_id == self.owner_id)
        if after:
            query = query.where(Connection.id > after)
        return list(self.session.scalars(query.order_by(Connection.id).limit(limit)))

    def add(self, connection: Connection) -> Connection:
        self.session.add(connection)
        self.session.flush()
        return connection

    def delete(self, connection: Connection) -> None:
        self.session.delete(connection)
        self.session.flush()
