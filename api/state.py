"""What the running API holds: settings, database, storage. Built once per app."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.db import make_engine, make_sessionmaker
from api.inference.streams import FileStreams, RedisStreams, streams_for
from api.queue_client import TaskQueue
from api.settings import Settings
from api.storage import Storage, storage_from_url


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
