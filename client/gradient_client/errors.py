"""The exceptions the client raises: one per kind of error the service answers (see the service's
docs/errors.md), and two for the network."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class GradientError(Exception):
    """An error answered by the service (or, for the subclasses below, met on the way to it).

    ``status`` is the HTTP status (``None`` for the network errors), ``type`` the service's
    stable snake_case error type, ``message`` its human sentence, ``request_id`` the request's
    ``X-Request-ID``; the error body's other fields are in ``details`` and readable as attributes
    (``error.where``, ``error.known``, ``error.errors``, ``error.limit`` ...).
    """

    def __init__(
        self,
        status: int | None,
        type: str,
        message: str,
        request_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.request_id = request_id
        self.details: dict[str, Any] = dict(details or {})

    def __getattr__(self, name: str) -> Any:
        details = self.__dict__.get("details")
        if details is not None and name in details:
            return details[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __str__(self) -> str:
        status = "" if self.status is None else f"{self.status} "
        request = "" if self.request_id is None else f" (request {self.request_id})"
        return f"{status}{self.type}: {self.message}{request}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status!r}, {self.type!r}, {self.message!r}, {self.request_id!r})"

    def __reduce__(self) -> Any:
        return (type(self), (self.status, self.type, self.message, self.request_id, self.details))


class InvalidInputError(GradientError):
    """400: the request's content was refused (a shape, a value, an expression...)."""


class UnauthorizedError(GradientError):
    """401: the server needs an API key, and none or a wrong one was sent."""


class NotFoundError(GradientError):
    """404: an unknown activation, loss, objective, optimizer, saved formula, model, or path."""


class PreconditionFailedError(GradientError):
    """412: a conditional write (``If-Match``, ``If-None-Match``) found another version."""


class TooLargeError(GradientError):
    """413: over one of the service's limits (``limit`` says which value)."""


class ValidationError(GradientError):
    """422: the body does not match the schema (``errors`` lists each violation)."""


class OverloadedError(GradientError):
    """503 (and 429): the service is full or out of memory; ``retry_after`` is the wait it asked
    for, in seconds (``None`` when it named none)."""

    @property
    def retry_after(self) -> float | None:
        value = self.details.get("retry_after")
        return None if value is None else float(value)


class DeadlineError(GradientError):
    """504: the request's time budget on the server ran out."""


class ConnectionFailedError(GradientError):
    """The service could not be reached, or the connection broke, even after the retries
    (``status`` is ``None``, ``type`` is ``"connection_failed"``; the cause is chained)."""


class ClientTimeoutError(GradientError):
    """The client's own ``timeout`` ran out while waiting for the service (``status`` is
    ``None``, ``type`` is ``"timeout"``). Never retried: the service may still be computing."""


STATUS_CLASSES: dict[int, type[GradientError]] = {
    400: InvalidInputError,
    401: UnauthorizedError,
    404: NotFoundError,
    412: PreconditionFailedError,
    413: TooLargeError,
    422: ValidationError,
    429: OverloadedError,
    503: OverloadedError,
    504: DeadlineError,
}

_NOT_FOUND_TYPES = {
    "not_found",
    "unknown_activation",
    "unknown_loss",
    "unknown_objective",
    "unknown_optimizer",
    "formula_not_found",
    "unknown_model",
}
_EXACT_STATUSES = {
    "unauthorized": 401,
    "method_not_allowed": 405,
    "unsupported_media_type": 415,
    "validation_error": 422,
    "internal_error": 500,
    "worker_crashed": 500,
    "precondition_failed": 412,
    "formula_exists": 412,
    "overloaded": 503,
    "database_unavailable": 503,
    "out_of_memory": 503,
    "device_out_of_memory": 503,
    "deadline_exceeded": 504,
}


def status_of_type(error_type: str) -> int:
    """The HTTP status the service answers an error ``type`` with (docs/errors.md): what an
    ``error`` event inside an event stream, which has already answered 200, would have had."""
    if error_type in _EXACT_STATUSES:
        return _EXACT_STATUSES[error_type]
    if error_type in _NOT_FOUND_TYPES:
        return 404
    if error_type.endswith(("_too_large", "_too_long")) or error_type.startswith(("too_many_", "expression_too_")):
        return 413
    return 400


def error_from_body(status: int, body: Any, request_id: str | None, retry_after: float | None = None) -> GradientError:
    """The exception for an error body ``{"error": {"type", "message", ...}}`` answered with
    ``status``."""
    detail = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(detail, Mapping) or not isinstance(detail.get("type"), str):
        return GradientError(status, "http_error", f"HTTP {status}: {str(body)[:200]}", request_id)
    details = {key: value for key, value in detail.items() if key not in ("type", "message")}
    if retry_after is not None and "retry_after" not in details:
        details["retry_after"] = retry_after
    request_id = request_id or details.get("request_id")
    cls = STATUS_CLASSES.get(status, GradientError)
    return cls(status, detail["type"], str(detail.get("message", "")), request_id, details)


def error_from_response(
    status: int, content: bytes, request_id: str | None, retry_after: float | None = None
) -> GradientError:
    """The exception for an error response's raw body (JSON or not)."""
    try:
        body: Any = json.loads(content)
    except ValueError:
        body = content.decode("utf-8", "replace")
    return error_from_body(status, body, request_id, retry_after)
