"""What the domain layer raises when it refuses a request: a message a person
can act on, the parameter at fault and a stable code. No HTTP here, only the
HTTP-like status each kind stands for (`STATUS_OF_KIND`): the API answers with
it in OpenAI's error shape (api/errors.py), workers turn refusals into a failed
job's error or a batch line's error record.
"""

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import ValidationError
from pydantic_core import PydanticCustomError


class ServiceError(Exception):
    """Base of every refusal; `kind` says what went wrong, not how to say it."""

    kind: ClassVar[str] = "invalid_request"
    # OpenAI's `type` field: the caller's mistake, or ours / a part we need.
    type: ClassVar[str] = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.details = details
        self.retry_after = retry_after


class InvalidRequest(ServiceError):
    """A parameter or the body is missing, malformed or not allowed."""

    kind = "invalid_request"


class NotFound(ServiceError):
    """No such object for this caller (it may belong to someone else)."""

    kind = "not_found"

    @classmethod
    def of(cls, what: str, object_id: str, *, param: str | None = None) -> "NotFound":
        # The same answer whether the object does not exist or belongs to
        # someone else: saying "forbidden" would confirm that the id exists.
        return cls(f"No such {what}: '{object_id}'", param=param, code=f"{what}_not_found")


class Forbidden(ServiceError):
    """The object exists and is visible, but this operation is not allowed on it."""

    kind = "forbidden"


class Conflict(ServiceError):
    """The object is not in a state that allows this (yet)."""

    kind = "conflict"


class TooLarge(ServiceError):
    """The upload is larger than this deployment accepts."""

    kind = "too_large"


class Unavailable(ServiceError):
    """A part the service needs (queue, inference worker) is away for now."""

    kind = "unavailable"
    type = "server_error"


class UpstreamFailed(ServiceError):
    """A worker answering the request ended it early."""

    kind = "upstream_failed"
    type = "server_error"


def model_not_found(model: str, *, param: str = "model") -> NotFound:
    """The one answer for a model name the caller cannot use, wherever a model is named."""
    return NotFound(
        f"The model '{model}' does not exist or you do not have access to it.", param=param, code="model_not_found"
    )


# The HTTP status of each kind of refusal: the API answers with it
# (api/errors.py), a batch line's error record carries it, and a worker's
# refusal travels by it (it crosses processes in a message).
STATUS_OF_KIND: dict[str, int] = {
    "invalid_request": 400,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "upstream_failed": 502,
    "unavailable": 503,
}
_KINDS_BY_STATUS: dict[int, type[ServiceError]] = {
    STATUS_OF_KIND[kind.kind]: kind
    for kind in (InvalidRequest, Forbidden, NotFound, Conflict, TooLarge, UpstreamFailed, Unavailable)
}


def status_of(error: ServiceError) -> int:
    return STATUS_OF_KIND[error.kind]


def error_for_status(status: int, message: str, *, param: str | None = None, code: str | None = None) -> ServiceError:
    """A refusal a worker reported by status, as the kind it stands for."""
    kind = _KINDS_BY_STATUS.get(status, UpstreamFailed if status >= 500 else InvalidRequest)
    return kind(message, param=param, code=code)


# ---------------------------------------------------------------------------
# Refusals found by pydantic: the request schemas validate, and their
# validation errors become InvalidRequests the same way wherever a request is
# validated (the API's request bodies, a batch's lines).

# The pydantic error type of a refusal whose message says it all, then its code.
_REFUSAL = "refusal:"


def refusal(message: str, *, code: str) -> PydanticCustomError:
    """Raise this from a validator of a request schema: the message is shown
    as it is (not as "Invalid value for ..."), with this `code`."""
    # No context: nothing in the message (which may quote the input) is formatted.
    return PydanticCustomError(_REFUSAL + code, message)


def refusal_at(location: Sequence[str | int], message: str, *, code: str, title: str, input: Any) -> ValidationError:
    """A refusal at `location` below the model being validated (a model
    validator otherwise reports at the model itself)."""
    line = {"type": refusal(message, code=code), "loc": tuple(location), "input": input}
    return ValidationError.from_exception_data(title, [line])


def param_of(location: Sequence[str | int]) -> str | None:
    """("hyperparameters", "extra", "lora_r") -> "hyperparameters.extra.lora_r"."""
    return ".".join(str(part) for part in location) or None


def invalid_request(error: Mapping[str, Any], *, location: Sequence[str | int] | None = None) -> InvalidRequest:
    """One of a pydantic ValidationError's errors() as the refusal it means.
    `location` replaces the error's own (the API drops "body", "query", ...)."""
    param = param_of(error.get("loc", ()) if location is None else location)
    kind = str(error.get("type", ""))
    if kind.startswith(_REFUSAL):
        return InvalidRequest(error["msg"], param=param, code=kind[len(_REFUSAL) :])
    message = error.get("msg") or "Invalid request"
    if param:
        message = f"Invalid value for '{param}': {message}"
    return InvalidRequest(message, param=param, code="invalid_value")


def invalid_request_of(exc: ValidationError) -> InvalidRequest:
    """The first problem of a failed validation, as a refusal."""
    return invalid_request(exc.errors(include_url=False)[0])
