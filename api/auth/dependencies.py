from typing import Annotated

from fastapi import Depends, Request

from api.auth.models import User
from api.auth.service import authenticate, hash_key
from api.db import SessionDep
from api.errors import APIError
from api.rate_limit import client_ip, rate_limits

_WWW_AUTHENTICATE = {"WWW-Authenticate": "Bearer"}


def current_user(request: Request, session: SessionDep) -> User:
    limits = rate_limits(request)
    ip = client_ip(request)
    if limits is not None:
        # Before the key is even looked at: an IP that failed too often waits,
        # whatever it sends now, so guessing keys does not pay.
        limits.check_client(ip)
    try:
        user, key = _authenticated_user(request, session)
    except APIError:
        if limits is not None:
            limits.record_auth_failure(ip)
        raise
    if limits is not None:
        limits.check_key(hash_key(key))  # the hash: no key in clear kept in memory
    return user


def _authenticated_user(request: Request, session: SessionDep) -> tuple[User, str]:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise APIError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            type="authentication_error",
            code="missing_api_key",
            headers=_WWW_AUTHENTICATE,
        )
    user = authenticate(session, key.strip())
    if user is None:
        raise APIError(
            401,
            "Incorrect API key provided.",
            type="authentication_error",
            code="invalid_api_key",
            headers=_WWW_AUTHENTICATE,
        )
    return user, key.strip()


CurrentUser = Annotated[User, Depends(current_user)]
