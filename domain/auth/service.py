"""Users and API keys.

A key looks like `th-` followed by 43 URL-safe characters (256 random bits).
Only its SHA-256 is stored; the key itself is shown once, when it is made.
"""

import hashlib
import re
import secrets
import time

from sqlalchemy.orm import Session

from domain.auth.models import ApiKey, User
from domain.auth.repository import ApiKeyRepository, UserRepository

KEY_PREFIX = "th-"
# How many leading characters of a key are stored to tell keys apart.
DISPLAY_PREFIX_LENGTH = 10
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
            display_prefix=key[:DISPLAY_PREFIX_LENGTH],
            created_at=int(time.time()),
        )
    )
    return key


def authenticate(session: Session, key: str) -> User | None:
    # One indexed lookup per request and deliberately no cache: a key revoked
    # with `tunehouse keys revoke` is refused from the very next request on.
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


class KeyManagementError(ValueError):
    """A key or user given to `tunehouse keys` that matches nothing to act on."""


def _describe(api_key: ApiKey) -> str:
    return f"{api_key.display_prefix} (user '{api_key.user.name}')"


def list_keys(session: Session, user_name: str | None = None) -> list[ApiKey]:
    """Every key (active and revoked), oldest first; only `user_name`'s if given."""
    user_id = None
    if user_name is not None:
        user = UserRepository(session).get_by_name(user_name)
        if user is None:
            raise KeyManagementError(f"no user named {user_name!r}")
        user_id = user.id
    return ApiKeyRepository(session).list_all(user_id)


def _key_to_revoke(keys: ApiKeyRepository, key: str) -> ApiKey:
    if len(key) > DISPLAY_PREFIX_LENGTH:
        api_key = keys.get_by_hash(hash_key(key))
        if api_key is None:
            raise KeyManagementError("no API key matches the key given")
        if api_key.revoked_at is not None:
            raise KeyManagementError(f"key {_describe(api_key)} was already revoked")
        return api_key
    if len(key) < DISPLAY_PREFIX_LENGTH or not key.startswith(KEY_PREFIX):
        raise KeyManagementError(
            f"give a whole key or its {DISPLAY_PREFIX_LENGTH}-character display prefix "
            f"(as `tunehouse keys list` shows it, e.g. '{KEY_PREFIX}AbCdEfG'), not {key!r}"
        )
    matches = keys.find_by_prefix(key)
    active = [k for k in matches if k.revoked_at is None]
    if not matches:
        raise KeyManagementError(f"no API key has the display prefix {key!r}")
    if not active:
        raise KeyManagementError(f"the key with display prefix {key!r} was already revoked")
    if len(active) > 1:
        owners = ", ".join(f"user '{k.user.name}'" for k in active)
        raise KeyManagementError(
            f"the display prefix {key!r} is ambiguous: {len(active)} active keys have it ({owners}); "
            "give the whole key, or revoke by --user"
        )
    return active[0]


def revoke_keys(session: Session, *, key: str | None = None, user_name: str | None = None) -> list[ApiKey]:
    """Revoke one key (whole, or by its display prefix) or every active key of a
    user; return the keys revoked. Raises KeyManagementError when nothing matches.

    The API looks keys up on every request (no cache), so a revoked key is
    refused from the next request on, once the session commits."""
    if (key is None) == (user_name is None):
        raise KeyManagementError("give either a key or a user")
    keys = ApiKeyRepository(session)
    if key is not None:
        targets = [_key_to_revoke(keys, key.strip())]
    else:
        user = UserRepository(session).get_by_name(user_name)
        if user is None:
            raise KeyManagementError(f"no user named {user_name!r}")
        targets = keys.active_of_user(user.id)
        if not targets:
            raise KeyManagementError(f"user {user_name!r} has no active API keys")
    now = int(time.time())
    return [api_key for api_key in targets if keys.revoke(api_key, now)]
