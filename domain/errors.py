"""What the domain layer raises when it refuses a request: a message a person
can act on, the parameter at fault and a stable code. No HTTP here; the API
maps each kind to a status and OpenAI's error shape (api/errors.py), and
workers turn them into a failed job's error or a batch line's error record.
"""

from typing import Any, ClassVar


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


# A worker reports a refusal by HTTP-like status (it travels in a message);
# this turns it back into the kind.
_KINDS_BY_STATUS: dict[int, type[ServiceError]] = {
    400: InvalidRequest,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    502: UpstreamFailed,
    503: Unavailable,
}


def error_for_status(status: int, message: str, *, param: str | None = None, code: str | None = None) -> ServiceError:
    kind = _KINDS_BY_STATUS.get(status, UpstreamFailed if status >= 500 else InvalidRequest)
    return kind(message, param=param, code=code)
