from typing import Annotated

from fastapi import Depends, Request

from api.auth.models import User
from api.auth.service import authenticate
from api.db import SessionDep
from api.errors import APIError

_WWW_AUTHENTICATE = {"WWW-Authenticate": "Bearer"}


def current_user(request: Request, session: SessionDep) -> User:
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
    return user


CurrentUser = Annotated[User, Depends(current_user)]
