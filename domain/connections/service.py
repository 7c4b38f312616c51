"""Connections: a user registers an external OpenAI-compatible endpoint
(OpenAI, another provider, a vLLM/Ollama/llama.cpp server, another
tunehouse) and uses its models wherever a model id is taken, as
`conn:{name}/{model}` (domain/inference/targets.py resolve_model).

The key is encrypted at rest (domain/connections/crypto.py) and never
returned; the base URL passes the SSRF guard (domain/connections/addresses.py)
at registration and again at every call (domain/connections/client.py).
A connection is its owner's alone: for anyone else it does not exist (404).
No HTTP here."""

import time

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain.auth.models import User
from domain.connections.addresses import RefusedAddress, check_url
from domain.connections.client import ConnectionClient, Endpoint, ExternalCallError, ExternalModel
from domain.connections.crypto import UnreadableKey, decrypt_key, encrypt_key
from domain.connections.models import Connection
from domain.connections.repository import ConnectionRepository
from domain.connections.schemas import (
    ConnectionCallError,
    ConnectionObject,
    ConnectionTest,
    CreateConnectionRequest,
    ExternalModelObject,
)
from domain.errors import Conflict, InvalidRequest, NotFound, ServiceError, Unavailable, UpstreamFailed
from domain.ids import new_id
from domain.pagination import list_page
from domain.settings import Settings

# Seconds a caller is told to wait when its connection had no free turn.
BUSY_RETRY_AFTER = 2

CONNECTION_PREFIX = "conn:"


def parse_connection_model(model: str) -> tuple[str, str] | None:
    """"conn:name/m" -> ("name", "m") (the model may hold more slashes); None if not a connection's model."""
    if not model.startswith(CONNECTION_PREFIX):
        return None
    name, slash, remote = model[len(CONNECTION_PREFIX):].partition("/")
    if not name or not slash or not remote:
        return None
    return name, remote


def connection_model_id(name: str, remote_model: str) -> str:
    return f"{CONNECTION_PREFIX}{name}/{remote_model}"


def _api_key(settings: Settings, token: str, name: str) -> str:
    try:
        return decrypt_key(settings, token)
    except UnreadableKey as exc:
        raise Conflict(f"The connection '{name}': {exc}", param="model", code="connection_key_unreadable") from None


def endpoint_of(connection: Connection, settings: Settings) -> Endpoint:
    return Endpoint(connection_id=connection.id, name=connection.name, base_url=connection.base_url,
                    api_key=_api_key(settings, connection.api_key_encrypted, connection.name))


def resolve_external(session: Session, owner_id: int, settings: Settings, model: str) -> ExternalModel | None:
    """None when `model` is not a conn: id, the connection is unknown to this
    user, or the model is outside its allow-list."""
    parsed = parse_connection_model(model)
    if parsed is None:
        return None
    name, remote = parsed
    connection = ConnectionRepository(session, owner_id).get_by_name(name)
    if connection is None or (connection.models is not None and remote not in connection.models):
        return None
    return ExternalModel(model=model, remote_model=remote, endpoint=endpoint_of(connection, settings))


# ------------------------------------------------------- across processes

def external_target(model: ExternalModel, settings: Settings) -> dict:
    """An external model in a worker's message: the key stays encrypted in
    the broker (the worker decrypts it with the same secret)."""
    return {
        "kind": "external", "model": model.model, "remote_model": model.remote_model,
        "connection_id": model.endpoint.connection_id, "name": model.endpoint.name,
        "base_url": model.endpoint.base_url, "api_key_encrypted": encrypt_key(settings, model.endpoint.api_key),
    }


def is_external_target(target: dict) -> bool:
    return target.get("kind") == "external"


def external_model_of(target: dict, settings: Settings) -> ExternalModel:
    """Conflict `connection_key_unreadable` when this process's connection
    secret is not the one that encrypted the key."""
    endpoint = Endpoint(connection_id=target["connection_id"], name=target["name"], base_url=target["base_url"],
                        api_key=_api_key(settings, target["api_key_encrypted"], target["name"]))
    return ExternalModel(model=target["model"], remote_model=target["remote_model"], endpoint=endpoint)


# ------------------------------------------------------------- the API's part

def _refused(exc: Exception) -> InvalidRequest:
    if isinstance(exc, RefusedAddress):
        return InvalidRequest(str(exc), param="base_url", code="refused_address")
    return InvalidRequest(f"base_url: {exc}", param="base_url", code="invalid_base_url")


def create_connection(session: Session, user: User, settings: Settings,
                      request: CreateConnectionRequest) -> ConnectionObject:
    repository = ConnectionRepository(session, user.id)
    if repository.get_by_name(request.name) is not None:
        raise _exists(request.name)
    try:
        check_url(request.base_url, settings)
    except (RefusedAddress, OSError) as exc:
        raise _refused(exc) from None
    connection = Connection(
        id=new_id("conn_"), owner_id=user.id, name=request.name, base_url=request.base_url,
        api_key_encrypted=encrypt_key(settings, request.api_key), models=request.models,
        created_at=int(time.time()),
    )
    try:
        repository.add(connection)
        session.commit()
    except IntegrityError:  # the same name registered at the same moment
        session.rollback()
        raise _exists(request.name) from None
    return ConnectionObject.of(connection)


def _exists(name: str) -> Conflict:
    return Conflict(f"You have a connection named '{name}' already; delete it first or pick another name.",
                    param="name", code="connection_exists")


def get_connection(session: Session, user: User, name: str) -> Connection:
    connection = ConnectionRepository(session, user.id).get_by_name(name)
    if connection is None:
        raise NotFound.of("connection", name, param="name")
    return connection


def list_connections(session: Session, user: User, *, after: str | None, limit: int) -> dict:
    connections = ConnectionRepository(session, user.id).list(after=after, limit=limit + 1)
    return list_page(connections, limit, ConnectionObject.of)


def delete_connection(session: Session, user: User, name: str) -> str:
    repository = ConnectionRepository(session, user.id)
    connection = get_connection(session, user, name)
    repository.delete(connection)
    session.commit()
    return connection.id


def try_connection(session: Session, user: User, settings: Settings, name: str) -> ConnectionTest:
    """Lists the endpoint's models: whether the URL, the key and the guard
    let a call through. Tried once: a person waits for the answer."""
    client = ConnectionClient(endpoint_of(get_connection(session, user, name), settings), settings,
                              max_attempts=1, interactive=True)
    session.close()  # no database connection held while the endpoint answers
    started = time.monotonic()
    try:
        models = client.list_models()
        error = None
    except ExternalCallError as exc:
        models, error = [], ConnectionCallError(code=exc.code, message=exc.message)
    return ConnectionTest(ok=error is None, models=models, latency_ms=int((time.monotonic() - started) * 1000),
                          error=error)


def connection_models(session: Session, user: User, settings: Settings, name: str) -> dict:
    """The endpoint's models that the allow-list lets through, as conn: ids;
    the allow-list itself when the endpoint cannot list them."""
    connection = get_connection(session, user, name)
    allowed, created = connection.models, connection.created_at
    client = ConnectionClient(endpoint_of(connection, settings), settings, max_attempts=1, interactive=True)
    session.close()
    try:
        remote = client.list_models()
        if allowed is not None:
            remote = [model for model in remote if model in allowed]
    except ExternalCallError as exc:
        if allowed is None:
            raise call_failure(exc) from None
        remote = allowed
    data = [ExternalModelObject(id=connection_model_id(name, model), created=created, owned_by=name)
            for model in remote]
    return {"object": "list", "data": data, "first_id": data[0].id if data else None,
            "last_id": data[-1].id if data else None, "has_more": False}


def call_failure(error: ExternalCallError, message: str | None = None, code: str | None = None) -> ServiceError:
    """A failed interactive call as the API's answer: 503 with Retry-After when
    the connection was busy, else 502."""
    if error.code == "busy":
        return Unavailable(message or error.message, code=code or error.code, retry_after=BUSY_RETRY_AFTER)
    return UpstreamFailed(message or error.message, code=code or error.code)


def call_error_status(error: ExternalCallError) -> int:
    """The HTTP status a failed call to a connection's endpoint stands for,
    for a chat request's answer or a batch line's error record: the caller's
    to fix (400: refused address, the endpoint's own 4xx) or the endpoint's (502)."""
    if error.code == "refused_address" or (error.code == "upstream_error" and error.status is not None
                                           and 400 <= error.status < 500):
        return 400
    return 502


def finish_reason(reason: str | None) -> str:
    """An endpoint's finish reason as this API's ("stop" or "length"):
    content_filter, tool_calls, ... stopped the answer too."""
    return "length" if reason == "length" else "stop"
