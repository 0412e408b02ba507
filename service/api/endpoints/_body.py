"""JSON request bodies for the compute routes: parsed by ``service.compute.wire.parse_json``
(simdjson for big numeric arrays, orjson for small bodies), then validated by the route's model.

Compute routes read their body here rather than through FastAPI's body parameter: FastAPI would
parse with the standard library and walk every number in pydantic. ``openapi.json_body_openapi``
documents the model in the OpenAPI all the same.
"""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from service.api.asgi import raw_header
from service.api.errors import request_validation_error
from service.compute.wire import parse_json
from service.errors import UnsupportedMediaType

Model = TypeVar("Model", bound=BaseModel)


def _is_json(content_type: bytes | None) -> bool:
    media_type = (content_type or b"").decode("latin-1").partition(";")[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


async def read_body(request: Request) -> bytes:
    """The whole body, read straight from ``receive`` (Starlette's ``body()`` goes through an
    async generator, a noticeable share of a small request)."""
    chunks = []
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def require_json(request: Request) -> None:
    """415 unless the request says its body is JSON."""
    if not _is_json(raw_header(request.scope, b"content-type")):
        raise UnsupportedMediaType("Send the body as JSON with the header Content-Type: application/json.")


def parse_json_body(body: bytes, model: type[Model]) -> Model:
    """A JSON ``body`` as ``model``: 400 if malformed, 422 if off-schema."""
    tree = parse_json(body)
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise request_validation_error(exc, "body") from exc
