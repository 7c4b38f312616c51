"""Users and API keys.

A key looks like `th-` followed by 43 URL-safe characters (256 random bits).
Only its SHA-256 is stored; the key itself is shown once, when it is made.
"""

import hashlib
import re
import secrets
import time

from sqlalchemy.orm import Session

from api.auth.models import ApiKey, User
from api.auth.repository import ApiKeyRepository, UserRepository

KEY_PREFIX = "th-"
ADMIN_USER = "admin"
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def valid_user_name(name: str) -> bool:
    # User names end up inside fine-tuned model names (ft:base:owner:suffix:id),
    # so they stay to a plain character set.
    return _USER_NAME.fullmatch(name) is not None


def get_or_create_user(session: Session, name: str, *, is_admin: bool = False) -> User:
    if not valid_user_name(name):
        raise ValueError(
            f"invalid user name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    users = UserRepository(session)
    user = users.get_by_name(name)
    if user is None:
        user = users.add(User(name=name, is_admin=is_admin, created_at=int(time.time())))
    return user


def create_key(session: Session, user: User) -> str:
    """Make a new key for `user` and return it in clear (the only time it exists)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    ApiKeyRepository(session).add(
        ApiKey(
            user_id=user.id,
            key_hash=hash_key(key),
            display_prefix=key[:10],
            created_at=int(time.time()),
        )
    )
    return key


def authenticate(session: Session, key: str) -> User | None:
    if not key.startswith(KEY_PREFIX):
        return None
    api_key = ApiKeyRepository(session).get_active_by_hash(hash_key(key))
    return api_key.user if api_key else None


def bootstrap_admin(session: Session) -> str | None:
    """On an empty database, create the admin user and return its first key."""
    if UserRepository(session).count() > 0:
        return None
    admin = get_or_create_user(session, ADMIN_USER, is_admin=True)
    return create_key(session, admin)
