"""Every error, ours or the framework's, answered with the contract's body."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.api.responses import JSONBytesResponse, protocol_error
from service.errors import ServiceError, status_code_for

logger = logging.getLogger("service.errors")
REQUEST_ID_KEY = "gradient.request_id"
"""Where RequestMiddleware keeps the request's id in the ASGI scope."""
INTERNAL_MESSAGE = "The server failed unexpectedly; this is a bug, please report it with the request_id."

HTTP_ERROR_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


class ServiceHTTPError(HTTPException):
    """Carries a ServiceError through code that only lets HTTPExceptions pass (body readers)."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(status_code=status_code_for(error), detail=error.message)
        self.error = error


def request_validation_error(exc: ValidationError, *where: str | int) -> RequestValidationError:
    """pydantic's errors as FastAPI's 422, each located under ``where`` (such as "body", "params")."""
    return RequestValidationError([{**error, "loc": (*where, *error["loc"])} for error in exc.errors()])


def error_response(
    request: Request,
    status: int,
    error_type: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONBytesResponse:
    body = {"error": {"type": error_type, "message": message, **extra}}
    return _answer(request.scope, status, body, headers)


def _answer(
    scope: Mapping[str, Any], status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> JSONBytesResponse:
    """The contract's error ``body``, or on the Open Inference Protocol's paths its own (``protocol_error``)."""
    status, shaped = protocol_error(scope, status, body)
    return JSONBytesResponse(shaped, status_code=status, headers=headers)


def _service_error(scope: Mapping[str, Any], error: ServiceError) -> JSONBytesResponse:
    return _answer(scope, status_code_for(error), error.body(), error.headers())


async def handle_service_error(request: Request, exc: Exception) -> JSONBytesResponse:
    assert isinstance(exc, ServiceError)
    return _service_error(request.scope, exc)


async def handle_http_exception(request: Request, exc: Exception) -> JSONBytesResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, ServiceHTTPError):
        return _service_error(request.scope, exc.error)
    error_type = HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"There is no route {request.method} {request.url.path}."
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}."
        return error_response(request, 405, error_type, message, headers={"Allow": _allowed(request)})
    else:
        message = str(exc.detail)
    return error_response(request, exc.status_code, error_type, message, headers=exc.headers)


def _allowed(request: Request) -> str:
    """Every method some route takes at this path (Starlette's own 405 names one route's only)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if route.matches(request.scope)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def handle_validation_error(request: Request, exc: Exception) -> JSONBytesResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_public_error(error) for error in exc.errors()]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"])
    message = f"The request does not match the schema: {where}: {first['msg']}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return error_response(request, 422, "validation_error", message + ".", errors=errors)


def _public_error(error: Any) -> dict[str, Any]:
    """A pydantic error without its ``input`` (possibly a megabyte) or unserialisable ``ctx``."""
    return {
        "loc": [part if isinstance(part, int | str) else str(part) for part in error.get("loc", ())],
        "msg": str(error.get("msg", "")),
        "type": str(error.get("type", "")),
    }


def internal_error(scope: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Log the exception being handled as a bug, with the request id, and return the contract's
    500 body, which carries the same id."""
    request_id = scope.get(REQUEST_ID_KEY)
    logger.exception("unhandled error %s (request %s)", where, request_id, extra={"request_id": request_id})
    return {"error": {"type": "internal_error", "message": INTERNAL_MESSAGE, "request_id": request_id}}


async def handle_unexpected(request: Request, exc: Exception) -> JSONBytesResponse:
    body = internal_error(request.scope, f"on {request.method} {request.url.path}")
    return _answer(request.scope, 500, body)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, handle_service_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(Exception, handle_unexpected)
