from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.auth.models import ApiKey, User


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
