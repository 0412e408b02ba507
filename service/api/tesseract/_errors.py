"""Errors on the Tesseract paths, in the shape Tesseract's runtime (a FastAPI app) answers with:
``{"detail": [...]}`` for a request that does not fit the schema (422, which Tesseract's client
raises as a ``pydantic.ValidationError``), ``{"detail": {...}}`` for the rest. The detail object
carries the service's own ``type`` and ``message`` (see docs/errors.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from service.api.errors import ServiceHTTPError, internal_error
from service.api.responses import JSONBytesResponse
from service.api.tesseract._arrays import Invalid
from service.errors import InvalidInput, ServiceError, status_code_for


class ProtocolError(Exception):
    """An answer of the protocol's own (406 for an encoding it cannot write, 404 and 405 for
    paths it does not have), with its ``detail``."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


def _response(status: int, detail: Any, headers: Mapping[str, str] | None = None) -> JSONBytesResponse:
    return JSONBytesResponse({"detail": detail}, status_code=status, headers=headers)


def _service_error(error: ServiceError) -> JSONBytesResponse:
    if isinstance(error, InvalidInput) and error.error_type == "invalid_json":  # as FastAPI reports it
        problem = {"type": "json_invalid", "loc": ["body", error.details.get("position", 0)], "msg": error.message}
        return _response(422, [problem])
    detail = {"type": error.error_type, "message": error.message, **error.details}
    return _response(status_code_for(error), detail, error.headers())


def protocol_response(exc: Exception, scope: Mapping[str, Any]) -> JSONBytesResponse:
    """The answer to ``exc`` on a Tesseract path; a fault of the service is logged as such."""
    if isinstance(exc, Invalid):
        return _response(422, exc.problems)
    if isinstance(exc, ProtocolError):
        return _response(exc.status, exc.detail)
    if isinstance(exc, ServiceError):
        return _service_error(exc)
    if isinstance(exc, ServiceHTTPError):
        return _service_error(exc.error)
    if isinstance(exc, RequestValidationError):
        problems = [
            {"type": e.get("type", ""), "loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()
        ]
        return _response(422, problems)
    if isinstance(exc, HTTPException):
        return _response(exc.status_code, exc.detail, exc.headers)
    body = internal_error(scope, f"on {scope.get('method')} {scope.get('path')}")
    return _response(500, body["error"])
