"""The FastAPI dependencies, all of them: what the running API holds
(`AppState`, built once per app), a database session per request, and the
authenticated caller. Endpoints declare what they need with these types.

Database sessions and threads. FastAPI runs plain `def` endpoints and
dependencies in AnyIO's thread pool, one hop per function, and a request's
session keeps its connection from its first query until it is closed: from
`current_user` through the endpoint to the response's serialization, each a
separate hop. When more requests wanted a connection than the pool had, the
threads all blocked waiting for one, while the requests holding the
connections waited for a thread to take their next step: nothing moved until
the 30 s pool timeout (then a 500). So a request takes a *turn* at the
database before any of its threads run (`DatabaseTurns`: waiting costs no
thread and no connection), there are as many turns as pool connections, the
thread pool has room for every turn plus other work (`threads_for`), and the
session is closed as soon as the endpoint is done, before the response is
sent or streamed (scope="function"). Waiting for a turn longer than
TUNEHOUSE_DB_BUSY_TIMEOUT is a 503 `database_busy` with Retry-After.
"""

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.errors import APIError, database_busy
from api.rate_limit import client_ip, rate_limits
from domain.auth.models import User
from domain.auth.service import authenticate, hash_key
from domain.db import make_engine, make_sessionmaker
from domain.inference.streams import FileStreams, RedisStreams, streams_for
from domain.queue_client import TaskQueue
from domain.settings import Settings
from domain.storage import Storage, storage_from_url

# Threads for work that holds no database turn: file downloads and uploads,
# chat requests waiting on their worker, /metrics, /healthz. As many as
# AnyIO's default (40) with the default 10 turns.
THREADS_BESIDE_DATABASE = 30


def threads_for(settings: Settings) -> int:
    """The API's thread pool: a thread for each database turn plus the rest."""
    return settings.db_pool_size + THREADS_BESIDE_DATABASE


class DatabaseTurn:
    """One request's permission to use the database; given back once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, semaphore: asyncio.Semaphore):
        self._loop = loop
        self._semaphore: asyncio.Semaphore | None = semaphore
        self._guard = threading.Lock()

    def give_back(self) -> None:
        """From the event loop or any thread (a session closed in a worker thread)."""
        with self._guard:
            semaphore, self._semaphore = self._semaphore, None
        if semaphore is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            semaphore.release()
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(semaphore.release)


class DatabaseTurns:
    """At most `size` requests of this process use the database at once (the
    pool's connections); the others wait here, in the event loop, in order of
    arrival, for at most `timeout` seconds."""

    def __init__(self, size: int, timeout: float):
        self.size = size
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore: asyncio.Semaphore | None = None

    async def take(self) -> DatabaseTurn:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use (an app serves from one loop)
            self._loop, self._semaphore = loop, asyncio.Semaphore(self.size)
        semaphore = self._semaphore
        try:
            async with asyncio.timeout(self.timeout):
                await semaphore.acquire()
        except TimeoutError:
            raise database_busy() from None
        return DatabaseTurn(loop, semaphore)


class RequestSession(Session):
    """A request's session: closing it also gives the request's database turn
    back, so an endpoint that closes it early (a chat request, before the model
    generates) holds no turn while it waits."""

    turn: DatabaseTurn | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            turn, self.turn = self.turn, None
            if turn is not None:
                turn.give_back()


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessionmaker: sessionmaker[Session]
    storage: Storage
    queue: TaskQueue
    # Where inference workers answer chat requests; one client for all requests.
    streams: RedisStreams | FileStreams
    # Requests' sessions (RequestSession) and their turns at the database.
    request_sessionmaker: sessionmaker[Session]
    turns: DatabaseTurns

    @classmethod
    def from_settings(cls, settings: Settings) -> "AppState":
        engine = make_engine(settings.database_url, pool_size=settings.db_pool_size, timeout=settings.db_busy_timeout)
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=make_sessionmaker(engine),
            storage=storage_from_url(settings.storage_url, endpoint_url=settings.s3_endpoint_url),
            queue=TaskQueue(settings),
            streams=streams_for(settings),
            request_sessionmaker=make_sessionmaker(engine, RequestSession),
            turns=DatabaseTurns(settings.db_pool_size, settings.db_busy_timeout),
        )

    async def open_session(self) -> RequestSession:
        """A session with a turn at the database: wait for the turn (or a 503)."""
        turn = await self.turns.take()
        session = self.request_sessionmaker()
        session.turn = turn
        return session

    @staticmethod
    async def close_session(session: Session) -> None:
        # In a thread (ending the transaction is a round trip to PostgreSQL),
        # under a limiter of its own as FastAPI does for teardowns: closing
        # never waits for a thread of the busy pool.
        await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))


def get_state(request: Request) -> AppState:
    return request.app.state.tunehouse


StateDep = Annotated[AppState, Depends(get_state)]


async def get_db(request: Request) -> AsyncIterator[Session]:
    """The request's session: opened with a turn at the database, closed (turn
    given back) as soon as the endpoint has returned, before its response is
    sent: a download or a streamed answer holds no connection."""
    state = get_state(request)
    session = await state.open_session()
    try:
        yield session
    finally:
        await state.close_session(session)


# scope="function": the session closes when the endpoint returns, not after
# the response has been sent.
SessionDep = Annotated[Session, Depends(get_db, scope="function")]

_WWW_AUTHENTICATE = {"WWW-Authenticate": "Bearer"}
# In the ASGI scope of a request made through a signed download link
# (api/links.py), which no client can set: the id of the user who signed it,
# whom the request is made as, without a key.
SIGNED_LINK_USER = "tunehouse.signed_link_user"


def current_user(request: Request, session: SessionDep) -> User:
    limits = rate_limits(request)
    ip = client_ip(request)
    if limits is not None:
        # Before the key is even looked at: an IP that failed too often waits,
        # whatever it sends now, so guessing keys does not pay.
        limits.check_client(ip)
    if SIGNED_LINK_USER in request.scope:
        user = session.get(User, request.scope[SIGNED_LINK_USER])
        if user is None:
            raise APIError(403, "The user who signed this link does not exist any more.", code="invalid_link")
        if limits is not None:
            limits.check_key(f"signed-link-user-{user.id}")
        return user
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


async def current_user_alone(request: Request) -> User:
    """The caller, for an endpoint that uses no request session: authenticated
    in a session of its own, closed (turn given back) before the endpoint runs,
    so a long upload does not hold a database turn while it streams in."""
    state = get_state(request)
    session = await state.open_session()
    try:
        return await run_in_threadpool(current_user, request, session)
    finally:
        await state.close_session(session)


CurrentUserAlone = Annotated[User, Depends(current_user_alone)]
