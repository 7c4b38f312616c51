"""Connection API keys encrypted at rest: Fernet (AES-128-CBC + HMAC-SHA256)
with a key derived from the deployment's connection secret
(TUNEHOUSE_CONNECTION_SECRET, else a random one kept in the data dir, made
on first use with mode 0600 as the link secret is: domain/links.py). Every
API and worker process that shares the secret reads the keys; a database
dump alone does not."""

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken

from domain.links import _secret_in
from domain.settings import Settings

SECRET_FILE = "connection-secret"
# A Fernet key of its own, derived for this use only, whatever else the secret serves.
_CONTEXT = b"tunehouse-connection-keys-v1\n"


class UnreadableKey(Exception):
    """The stored key was encrypted with another secret (or changed)."""


def connection_secret(settings: Settings) -> bytes:
    if settings.connection_secret:  # at least 32 characters (domain/settings.py checks)
        return settings.connection_secret.encode()
    return _secret_in(settings.data_dir / SECRET_FILE)


def _fernet(settings: Settings) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(_CONTEXT + connection_secret(settings)).digest()))


def encrypt_key(settings: Settings, api_key: str) -> str:
    return _fernet(settings).encrypt(api_key.encode()).decode()


def decrypt_key(settings: Settings, token: str) -> str:
    try:
        return _fernet(settings).decrypt(token.encode()).decode()
    except InvalidToken:
        raise UnreadableKey(
            "its API key cannot be read with this process's connection secret: TUNEHOUSE_CONNECTION_SECRET "
            "changed, or differs between the API and the workers; register the connection again."
        ) from None
