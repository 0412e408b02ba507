"""Responses written by orjson: strict JSON (non-finite values are strings upstream), numpy-aware."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse
from starlette.types import Send

from service.errors import ServiceError

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def dump_json(payload: Any) -> bytes:
    return orjson.dumps(payload, option=JSON_OPTIONS)


async def send_error(send: Send, status: int, error: ServiceError, *extra_headers: tuple[bytes, bytes]) -> None:
    """Answer with ``error``'s contract body straight through ASGI (for middleware, which sits
    outside the app's exception handlers)."""
    body = dump_json(error.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra_headers]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers().items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class JSONBytesResponse(JSONResponse):
    """A response whose body is already-serialised JSON, or any payload orjson can write.

    A JSONResponse, so that the OpenAPI documents it as the route's JSON model."""

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else dump_json(content)
