"""The FastAPI dependencies, all of them: what the running API holds
(`AppState`, built once per app), a database session per request, and the
authenticated caller. Endpoints declare what they need with these types."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.errors import APIError
from api.rate_limit import client_ip, rate_limits
from domain.auth.models import User
from domain.auth.service import authenticate, hash_key
from domain.db import make_engine, make_sessionmaker
from domain.inference.streams import FileStreams, RedisStreams, streams_for
from domain.queue_client import TaskQueue
from domain.settings import Settings
from domain.storage import Storage, storage_from_url


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessionmaker: sessionmaker[Session]
    storage: Storage
    queue: TaskQueue
    # Where inference workers answer chat requests; one client for all requests.
    streams: RedisStreams | FileStreams

    @classmethod
    def from_settings(cls, settings: Settings) -> "AppState":
        engine = make_engine(settings.database_url)
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=make_sessionmaker(engine),
            storage=storage_from_url(settings.storage_url, endpoint_url=settings.s3_endpoint_url),
            queue=TaskQueue(settings),
            streams=streams_for(settings),
        )


def get_state(request: Request) -> AppState:
    return request.app.state.tunehouse


StateDep = Annotated[AppState, Depends(get_state)]


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]

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
