"""Connections (extension): a user's external OpenAI-compatible endpoints,
whose models are `conn:{name}/{model}` wherever a model id is taken
(domain/connections/service.py). The key is never in a response."""

from typing import Annotated

from fastapi import APIRouter

from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import COMMON_ERROR_RESPONSES, error_responses
from api.pagination import LimitQuery, after_query, check_cursor
from domain.connections import service
from domain.connections.schemas import (
    ConnectionDeleted,
    ConnectionList,
    ConnectionObject,
    ConnectionTest,
    CreateConnectionRequest,
    ExternalModelList,
)

router = APIRouter(prefix="/v1/connections", tags=["connections"], responses=COMMON_ERROR_RESPONSES)


@router.post("", response_model=ConnectionObject, responses=error_responses(409))
def create_connection(body: CreateConnectionRequest, user: CurrentUser, session: SessionDep,
                      state: StateDep) -> ConnectionObject:
    """Register an endpoint. Its base URL must not reach link-local or cloud
    metadata addresses (nor loopback and private ones where the deployment
    refuses them): 400 `refused_address`."""
    return service.create_connection(session, user, state.settings, body)


@router.get("", response_model=ConnectionList)
def list_connections(user: CurrentUser, session: SessionDep, limit: LimitQuery = 100,
                     after: Annotated[str | None, after_query("conn_")] = None) -> dict:
    return service.list_connections(session, user, after=check_cursor("conn_", after), limit=limit)


@router.get("/{name}", response_model=ConnectionObject, responses=error_responses(404))
def retrieve_connection(name: str, user: CurrentUser, session: SessionDep) -> ConnectionObject:
    return ConnectionObject.of(service.get_connection(session, user, name))


@router.delete("/{name}", response_model=ConnectionDeleted, responses=error_responses(404))
def delete_connection(name: str, user: CurrentUser, session: SessionDep) -> ConnectionDeleted:
    return ConnectionDeleted(id=service.delete_connection(session, user, name), deleted=True)


@router.post("/{name}/test", response_model=ConnectionTest, responses=error_responses(404))
def test_connection(name: str, user: CurrentUser, session: SessionDep, state: StateDep) -> ConnectionTest:
    """Lists the endpoint's models; a failure is `ok: false` with its error (still a 200)."""
    return service.try_connection(session, user, state.settings, name)


@router.get("/{name}/models", response_model=ExternalModelList, responses=error_responses(404, 502))
def list_connection_models(name: str, user: CurrentUser, session: SessionDep, state: StateDep) -> dict:
    """The endpoint's models the allow-list lets through, as `conn:{name}/{model}`
    (the allow-list itself when the endpoint cannot list them)."""
    return service.connection_models(session, user, state.settings, name)
