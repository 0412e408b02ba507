"""Raw ASGI header access, for the layers that run on every request."""

from __future__ import annotations

from starlette.types import Scope


def raw_header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), as sent: cheaper than ``request.headers``,
    which decodes and lower-cases on every lookup."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None
