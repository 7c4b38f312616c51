from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from domain.auth.models import ApiKey, User


class UserRepository:
    def __init__(self, session: Session):
        self.session = session

    def count(self) -> int:
        return self.session.scalar(select(func.count()).select_from(User)) or 0

    def get_by_name(self, name: str) -> User | None:
        return self.session.scalar(select(User).where(User.name == name))

    def add(self, user: User) -> User:
        self.session.add(user)
        self.session.flush()
        return user


class ApiKeyRepository:
    def __init__(self, session: Session):
        self.session = session

    def get_active_by_hash(self, key_hash: str) -> ApiKey | None:
        return self.session.scalar(
            select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        )

    def add(self, api_key: ApiKey) -> ApiKey:
        self.session.add(api_key)
        self.session.flush()
        return api_key

    def get_by_hash(self, key_hash: str) -> ApiKey | None:
        return self.session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))

    def find_by_prefix(self, display_prefix: str) -> list[ApiKey]:
        return list(
            self.session.scalars(
                select(ApiKey).where(ApiKey.display_prefix == display_prefix).order_by(ApiKey.id)
            )
        )

    def active_of_user(self, user_id: int) -> list[ApiKey]:
        return list(
            self.session.scalars(
                select(ApiKey).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None)).order_by(ApiKey.id)
            )
        )

    def list_all(self, user_id: int | None = None) -> list[ApiKey]:
        query = select(ApiKey)
        if user_id is not None:
            query = query.where(ApiKey.user_id == user_id)
        return list(self.session.scalars(query.order_by(ApiKey.id)))

    def revoke(self, api_key: ApiKey, at: int) -> bool:
        """Revoke one key; False if it was revoked already (by someone else meanwhile)."""
        result = self.session.execute(
            update(ApiKey).where(ApiKey.id == api_key.id, ApiKey.revoked_at.is_(None)).values(revoked_at=at)
        )
        self.session.refresh(api_key)
        return result.rowcount == 1
