"""Connections (a tunehouse extension): a user's external OpenAI-compatible
endpoints, whose models are addressed as `conn:{name}/{model}`. The key goes
in and never comes out: no response holds it or any hint of it."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from domain.connections.addresses import check_url_shape
from domain.connections.models import Connection
from domain.errors import refusal
from domain.pagination import ListPage

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
MAX_ALLOWED_MODELS = 1000


class CreateConnectionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Lower-case letters, digits, '_', '.', '-'; unique per user.")
    base_url: str = Field(min_length=1, max_length=2048, description="e.g. https://api.openai.com/v1")
    # Empty: the endpoint needs none (a local server); no Authorization header is sent.
    api_key: str = Field(max_length=4096, repr=False)
    # The allow-list: only these models of the endpoint may be used; None: all of them.
    models: list[str] | None = Field(default=None, max_length=MAX_ALLOWED_MODELS)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        try:
            return check_url_shape(value)
        except ValueError as exc:
            raise refusal(str(exc), code="invalid_base_url") from None

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if any(not model.strip() or len(model) > 256 or any(c.isspace() for c in model) for model in value):
            raise refusal("Each model of the allow-list is a model id (1 to 256 characters, no spaces).",
                          code="invalid_models")
        return list(dict.fromkeys(value))


class ConnectionObject(BaseModel):
    object: Literal["connection"] = "connection"
    id: str
    name: str
    base_url: str
    models: list[str] | None
    created_at: int

    @classmethod
    def of(cls, connection: Connection) -> "ConnectionObject":
        return cls(id=connection.id, name=connection.name, base_url=connection.base_url,
                   models=connection.models, created_at=connection.created_at)


ConnectionList = ListPage[ConnectionObject]


class ConnectionDeleted(BaseModel):
    id: str
    object: Literal["connection.deleted"] = "connection.deleted"
    deleted: bool


class ConnectionCallError(BaseModel):
    """Why a call failed: timeout, rate_limited, connection_error, upstream_error, refused_address, bad_response."""

    code: str
    message: str


class ConnectionTest(BaseModel):
    object: Literal["connection.test"] = "connection.test"
    ok: bool
    models: list[str]  # the endpoint's models (all of them, whatever the allow-list)
    latency_ms: int
    error: ConnectionCallError | None


class ExternalModelObject(BaseModel):
    id: str  # conn:{name}/{model}
    object: Literal["model"] = "model"
    created: int
    owned_by: str  # the connection's name


ExternalModelList = ListPage[ExternalModelObject]
