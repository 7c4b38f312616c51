"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Every failure a client can cause becomes a 4xx with this body; anything else is
logged and answered with a generic 500 of the same shape, never a stack trace.
"""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

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


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(kind: str, object_id: str, *, param: str | None = None) -> APIError:
    # The same answer whether the object does not exist or belongs to someone
    # else: a 403 would confirm that the id exists.
    return APIError(404, f"No such {kind}: '{object_id}'", param=param, code=f"{kind}_not_found")


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


_STATUS_ERROR_TYPES = {
    401: ("authentication_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    error_type, code = _STATUS_ERROR_TYPES.get(exc.status_code, ("invalid_request_error", None))
    message = str(exc.detail)
    if exc.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
        message = f"Unknown request URL: {request.method} {request.url.path}."
    return _response(exc.status_code, error_body(message, error_type, None, code), getattr(exc, "headers", None))


def _param_of(location: tuple) -> str | None:
    # ("body", "hyperparameters", "n_epochs") -> "hyperparameters.n_epochs"
    parts = [str(p) for p in location if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or None


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    param = _param_of(tuple(first.get("loc", ())))
    message = first.get("msg", "Invalid request")
    if param:
        message = f"Invalid value for '{param}': {message}"
    return _response(400, error_body(message, "invalid_request_error", param, "invalid_value"))


async def _database_unavailable(_request: Request, exc: OperationalError) -> JSONResponse:
    log.warning("database unavailable: %s", exc.orig)
    body = error_body("The database is unavailable; try again shortly.", "server_error", None, "database_unavailable")
    return _response(503, body, {"Retry-After": "5"})


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return _response(500, error_body("Internal server error.", "server_error", None, "internal_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)
