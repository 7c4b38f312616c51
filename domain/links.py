"""Signed download links: a short-lived token that stands for one GET of one
download path of the API, made as the user who signed it.

The token is the link's claims (user id, path with its query, expiry) and an
HMAC-SHA256 over them with the deployment's link secret, so any change to
any part of it, or a token from another deployment, fails; an expired one is
told apart from a forged one. The path is the object: a link signed for one
job's adapter opens nothing else. No HTTP here (api/links.py serves them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from domain.settings import Settings

LINK_SECONDS = 300
SECRET_FILE = "link-secret"
# Tokens of another kind or version signed with the same secret never verify as links.
_CONTEXT = b"tunehouse-download-link-v1\n"


class InvalidLink(Exception):
    """Not a link this deployment signed, or changed since."""


class ExpiredLink(Exception):
    """A genuine link whose time is up."""


@dataclass(frozen=True)
class SignedLink:
    user_id: int
    path: str  # with its query string, as it will be requested
    expires_at: int  # unix seconds


def sign_link(secret: bytes, link: SignedLink) -> str:
    claims = json.dumps({"e": link.expires_at, "p": link.path, "u": link.user_id}, separators=(",", ":"), sort_keys=True)
    body = _b64(claims.encode())
    return f"{body}.{_b64(_mac(secret, body))}"


def verify_link(secret: bytes, token: str, now: float) -> SignedLink:
    """The link a token stands for; InvalidLink if it was not signed here as
    it is, ExpiredLink if it was but its time is up."""
    body, dot, mac = token.partition(".")
    try:
        given = _unb64(mac)
        claims = json.loads(_unb64(body))
    except (ValueError, binascii.Error):
        raise InvalidLink("not a download link") from None
    if not dot or not hmac.compare_digest(given, _mac(secret, body)):
        raise InvalidLink("the link's signature does not match")
    if (
        not isinstance(claims, dict)
        or not isinstance(claims.get("u"), int)
        or not isinstance(claims.get("p"), str)
        or not isinstance(claims.get("e"), int)
    ):
        raise InvalidLink("not a download link")
    link = SignedLink(user_id=claims["u"], path=claims["p"], expires_at=claims["e"])
    if now >= link.expires_at:
        raise ExpiredLink(f"the link expired at {link.expires_at}")
    return link


def _mac(secret: bytes, body: str) -> bytes:
    return hmac.new(secret, _CONTEXT + body.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or not text.isascii():
        raise ValueError("empty or not ASCII")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ------------------------------------------------------------------ the secret


def link_secret(settings: Settings) -> bytes:
    """TUNEHOUSE_LINK_SECRET, else a random secret kept in the data directory
    (made on first use), which serves every API process that shares it."""
    if settings.link_secret:
        return settings.link_secret.encode()
    return _secret_in(settings.data_dir / SECRET_FILE)


@lru_cache
def _secret_in(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
        try:
            os.link(staged, path)  # atomic, and never replaces: two processes starting at once agree
        except FileExistsError:
            pass
        finally:
            os.unlink(staged)
    secret = path.read_bytes().strip()
    if len(secret) < 32:
        raise ValueError(f"{path} holds fewer than 32 characters: remove it to have a new secret made")
    return secret
