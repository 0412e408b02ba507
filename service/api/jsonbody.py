"""JSON request bodies parsed by simdjson, with big numeric arrays left lazy for the tensor codec.

FastAPI parses bodies with the standard library; this route class swaps in
``service.compute.tensors.parse_json``, which is several times faster on large arrays and hands
malformed JSON back as the contract's 400 error.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from service.compute.tensors import parse_json
from service.errors import ServiceError, UnsupportedMediaType, status_code_for


class ServiceHTTPError(HTTPException):
    """Carries a ServiceError through FastAPI's body reading, which re-raises HTTPExceptions."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(status_code=status_code_for(error), detail=error.message)
        self.error = error


class FastJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = parse_json(await self.body())
            except ServiceError as error:
                raise ServiceHTTPError(error) from error
        return self._json


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").partition(";")[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


class FastJSONRoute(APIRoute):
    """An APIRoute whose JSON bodies go through ``parse_json``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            if request.method == "POST" and not _is_json(request.headers.get("content-type")):
                raise ServiceHTTPError(
                    UnsupportedMediaType(
                        "Send the body as JSON with the header Content-Type: application/json.",
                        error_type="unsupported_media_type",
                    )
                )
            return await handler(FastJSONRequest(request.scope, request.receive))

        return route_handler
