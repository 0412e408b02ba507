"""Responses written by orjson: strict JSON (non-finite values are strings upstream), numpy-aware."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def dump_json(payload: Any) -> bytes:
    return orjson.dumps(payload, option=JSON_OPTIONS)


class JSONBytesResponse(JSONResponse):
    """A response whose body is already-serialised JSON, or any payload orjson can write.

    A JSONResponse, so that the OpenAPI documents it as the route's JSON model."""

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else dump_json(content)
