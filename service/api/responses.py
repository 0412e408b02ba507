"""Responses written by orjson: strict JSON (non-finite values are strings upstream), numpy-aware."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi.responses import JSONResponse
from starlette.types import Scope, Send

from service.errors import ServiceError

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
OIP_PREFIX = "/v2"
"""The Open Inference Protocol's paths, whose errors have that protocol's body."""
TESSERACT_PREFIX = "/tesseract/"
"""Saved formulas' Tesseracts, whose errors have the shape of Tesseract's runtime, ``{"detail": ...}``."""


def dump_json(payload: Any) -> bytes:
    return orjson.dumps(payload, option=JSON_OPTIONS)


def protocol_error(scope: Mapping[str, Any], status: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """An error's status and body for the request's path: the contract's, or under /v2 the Open
    Inference Protocol's ``{"error": "<message>"}`` (a schema violation is a 400 there: the
    protocol knows no 422)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    if path.startswith(TESSERACT_PREFIX):  # a schema violation's detail is pydantic's list, as FastAPI's
        error = body["error"]
        return status, {"detail": error["errors"] if status == 422 and "errors" in error else error}
    if path != OIP_PREFIX and not path.startswith(OIP_PREFIX + "/"):
        return status, body
    error = body["error"]
    message = str(error["message"])
    if error.get("request_id"):
        message += f" (request id {error['request_id']})"
    return (400 if status == 422 else status), {"error": message}


async def send_error(
    send: Send, status: int, error: ServiceError, *extra_headers: tuple[bytes, bytes], scope: Scope
) -> None:
    """Answer with ``error``'s body (see ``protocol_error``) straight through ASGI (for
    middleware, which sits outside the app's exception handlers)."""
    status, payload = protocol_error(scope, status, error.body())
    body = dump_json(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra_headers]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers().items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class JSONBytesResponse(JSONResponse):
    """A response whose body is already-serialised JSON, or any payload orjson can write.

    A JSONResponse, so that the OpenAPI documents it as the route's JSON model."""

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else dump_json(content)
