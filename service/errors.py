"""Domain exceptions, free of HTTP, and the one table that maps them to status codes.

ServiceError
├── InvalidInput          400  the input is well-formed JSON but makes no sense (ragged, wrong dtype, ...)
│   └── DeviceUnavailable 400  cuda asked for and absent
├── Unauthorized          401
├── NotFound              404  unknown activation, loss, objective, optimizer, formula
├── PreconditionFailed    412  a saved formula changed since the If-Match ETag was read
├── LimitExceeded         413  a configured size limit is exceeded
├── UnsupportedMediaType  415  the body is not sent as JSON
├── Overloaded            503  no compute slot and no room to wait (also GPU out of memory)
├── DatabaseUnavailable   503  the formulas' database cannot be reached
├── DeadlineExceeded      504  the request's time budget ran out
└── WorkerCrashed         500  the worker process computing the request died
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error the service reports on purpose."""

    error_type = "service_error"

    def __init__(self, message: str, *, error_type: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if error_type is not None:
            self.error_type = error_type
        self.details = details

    def body(self) -> dict[str, Any]:
        """The contract's error body."""
        return {"error": {"type": self.error_type, "message": self.message, **self.details}}

    def headers(self) -> dict[str, str]:
        """Response headers the error calls for."""
        return {}


class InvalidInput(ServiceError):
    error_type = "invalid_input"


class DeviceUnavailable(InvalidInput):
    error_type = "device_unavailable"


class Unauthorized(ServiceError):
    error_type = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class NotFound(ServiceError):
    error_type = "not_found"


class PreconditionFailed(ServiceError):
    error_type = "precondition_failed"


class LimitExceeded(ServiceError):
    error_type = "limit_exceeded"


def check_limit(amount: int, limit: int, what: str, error_type: str) -> None:
    """Refuse ``amount`` of ``what`` over its configured ``limit``: a 413 naming both."""
    if amount > limit:
        raise LimitExceeded(
            f"This request needs {amount} {what}, over the limit of {limit}.", error_type=error_type, limit=limit
        )


class UnsupportedMediaType(ServiceError):
    error_type = "unsupported_media_type"


class Overloaded(ServiceError):
    error_type = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class DatabaseUnavailable(ServiceError):
    error_type = "database_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class DeadlineExceeded(ServiceError):
    error_type = "deadline_exceeded"


class WorkerCrashed(ServiceError):
    error_type = "worker_crashed"


STATUS_CODES: dict[type[ServiceError], int] = {
    InvalidInput: 400,
    Unauthorized: 401,
    NotFound: 404,
    PreconditionFailed: 412,
    LimitExceeded: 413,
    UnsupportedMediaType: 415,
    Overloaded: 503,
    DatabaseUnavailable: 503,
    DeadlineExceeded: 504,
    ServiceError: 500,
}


def status_code_for(error: ServiceError) -> int:
    """The HTTP status of an error: the entry of its nearest class in STATUS_CODES."""
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return 500
