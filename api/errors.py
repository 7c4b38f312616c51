"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Every failure a client can cause becomes a 4xx with this body; anything else is
logged and answered with a generic 500 of the same shape, never a stack trace.
The domain layer raises `ServiceError`s (domain/errors.py) without knowing
HTTP; this is the one place that gives each kind its status.
"""

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from domain.errors import STATUS_OF_KIND, ServiceError, invalid_request

log = logging.getLogger("tunehouse.api")


class APIError(Exception):
    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.details = details
        self.headers = headers


def api_error(error: ServiceError) -> APIError:
    """A domain refusal as the HTTP error it is answered with."""
    headers = {"Retry-After": f"{error.retry_after:g}"} if error.retry_after is not None else None
    return APIError(
        STATUS_OF_KIND[error.kind],
        error.message,
        type=error.type,
        param=error.param,
        code=error.code,
        details=error.details,
        headers=headers,
    )


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(kind: str, object_id: str, *, param: str | None = None) -> APIError:
    # The same answer whether the object does not exist or belongs to someone
    # else: a 403 would confirm that the id exists.
    return APIError(404, f"No such {kind}: '{object_id}'", param=param, code=f"{kind}_not_found")


class ErrorObject(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None
    details: dict[str, Any] | None = Field(
        default=None, description="Extension, on some errors only: e.g. every bad line of a refused upload."
    )


class ErrorResponse(BaseModel):
    """The body of every error answer, in OpenAI's shape."""

    error: ErrorObject


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}}}
_ERROR_DOCS: dict[int, dict[str, Any]] = {
    400: {"description": "Invalid request: a parameter or the body is missing, malformed or not allowed."},
    401: {
        "description": "No API key, or not a valid one.",
        "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    },
    403: {"description": "The object exists but this operation is not allowed on it."},
    404: {"description": "No such object (or it belongs to someone else), or no such URL."},
    409: {"description": "The object is not in a state that allows this yet."},
    413: {"description": "The upload is larger than this server's limit."},
    422: {"description": "The request is well formed but cannot be done for this object (e.g. its architecture)."},
    429: {"description": "Too many requests, or too many failed authentications.", "headers": _RETRY_AFTER},
    502: {"description": "The inference worker ended the answer early."},
    503: {
        "description": "A part the service needs (database, task queue, inference worker) is unavailable for now.",
        "headers": _RETRY_AFTER,
    },
}


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, each with the error body."""
    return {status: {"model": ErrorResponse, **_ERROR_DOCS[status]} for status in status_codes}


# What every authenticated /v1 operation may answer whatever it does: a bad
# parameter or body, a bad key, a rate limit, the database away. Routers add
# their own (404, 409, ...).
COMMON_ERROR_RESPONSES = error_responses(400, 401, 429, 503)


def error_body(
    message: str,
    type: str,
    param: str | None = None,
    code: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": type, "param": param, "code": code}
    if details:
        error["details"] = details
    return {"error": error}


def _response(status_code: int, body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status_code, content=body, headers=headers)


async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
    body = error_body(exc.message, exc.type, exc.param, exc.code, exc.details)
    return _response(exc.status_code, body, exc.headers)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    return await _api_error(request, api_error(exc))


_STATUS_ERROR_TYPES = {
    401: ("authentication_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """The methods the API's routes take at this request's path."""
    # Routes not in the schema are left out: the web UI's catch-all takes any
    # GET (and answers /v1 paths with a 404). Included routers count.
    routes = [route for route in request.app.router.routes if getattr(route, "include_in_schema", True)]
    return [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status_code, headers = exc.status_code, getattr(exc, "headers", None)
    message = str(exc.detail)
    if status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
        message = f"Unknown request URL: {request.method} {request.url.path}."
        # A URL the API has, with another method: 405 and every method it takes
        # (Starlette's 405 names only the first route's; a GET on a POST-only
        # route lands on the web UI's catch-all, which says 404).
        allowed = _allowed_methods(request)
        if allowed and request.method not in allowed:
            status_code, headers = 405, {**(headers or {}), "Allow": ", ".join(allowed)}
            message = f"{message} It takes {', '.join(allowed)}."
    error_type, code = _STATUS_ERROR_TYPES.get(status_code, ("invalid_request_error", None))
    return _response(status_code, error_body(message, error_type, None, code), headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # The refusal the domain makes of the same error wherever it validates a
    # request (a batch line too); the parameter without where it was sent:
    # ("body", "hyperparameters", "n_epochs") -> "hyperparameters.n_epochs".
    first = exc.errors()[0]
    location = [part for part in first.get("loc", ()) if part not in ("body", "query", "path", "header", "form")]
    return await _service_error(request, invalid_request(first, location=location))


def database_busy() -> APIError:
    """The answer to a request that got no turn at the database, no connection
    or (SQLite) not the write lock within TUNEHOUSE_DB_BUSY_TIMEOUT: a quick
    503 that says when to try again, rather than a request that hangs."""
    return APIError(
        503,
        "The database is busy; try again shortly.",
        type="server_error",
        code="database_busy",
        headers={"Retry-After": "1"},
    )


async def _database_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
    if "database is locked" in str(exc.orig):
        # SQLite's single writer was busy for the whole busy timeout.
        log.warning("database busy: %s", exc.orig)
        return await _api_error(request, database_busy())
    log.warning("database unavailable: %s", exc.orig)
    body = error_body("The database is unavailable; try again shortly.", "server_error", None, "database_unavailable")
    return _response(503, body, {"Retry-After": "5"})


async def _pool_timeout(request: Request, _exc: PoolTimeoutError) -> JSONResponse:
    # No connection came free in time (work outside requests, which takes no
    # turn, can still find the pool empty).
    log.warning("database busy: no connection free in the pool")
    return await _api_error(request, database_busy())


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(item) for item in value)
    return False


async def _invalid_data(request: Request, exc: DataError) -> JSONResponse:
    # PostgreSQL text cannot hold U+0000: a client's string with one (an id in
    # the path, a query parameter, a field of the body) cannot be looked up or
    # stored. Any other DataError is the server's own.
    if not _has_nul(exc.params):
        return await _unexpected(request, exc)
    message = "Strings must not contain the NUL character (U+0000)."
    return _response(400, error_body(message, "invalid_request_error", None, "invalid_value"))


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return _response(500, error_body("Internal server error.", "server_error", None, "internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(PoolTimeoutError, _pool_timeout)
    app.add_exception_handler(DataError, _invalid_data)
    app.add_exception_handler(Exception, _unexpected)
    _document_validation_errors_as_400(app)


_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _document_validation_errors_as_400(app: FastAPI) -> None:
    """FastAPI documents a 422 with its own body on every operation with
    parameters; this API answers those as 400 in the error shape (above), which
    the routers document. Drop the 422s and their now unused schemas, and list
    each operation's responses in status order."""
    generate = app.openapi  # FastAPI's: made once, remade if routes are added
    done: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        schema = generate()
        if not done or done[0] is not schema:
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    responses = operation.get("responses", {})
                    if "HTTPValidationError" in json.dumps(responses.get("422", {})):  # FastAPI's, not ours
                        responses.pop("422")
                    operation["responses"] = dict(sorted(responses.items()))
            schemas = schema.get("components", {}).get("schemas", {})
            for name in _FASTAPI_VALIDATION_SCHEMAS:  # HTTPValidationError refers to ValidationError
                if f'"#/components/schemas/{name}"' not in json.dumps(schema):
                    schemas.pop(name, None)
            done[:] = [schema]
        return schema

    app.openapi = openapi
