"""Request accessors and dependency aliases shared by the routes and the middleware."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.types import Scope

from service.config import Settings


def settings_of(request: Request) -> Settings:
    """The app's settings; compute routes call this directly rather than as a dependency,
    which FastAPI would solve on every request."""
    settings: Settings = request.app.settings
    return settings


async def get_settings(request: Request) -> Settings:
    # async: a plain def dependency would cost every request a hop to the thread pool.
    return settings_of(request)


SettingsDep = Annotated[Settings, Depends(get_settings)]


def raw_header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), as sent: cheaper than ``request.headers``,
    which decodes and lower-cases on every lookup."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None
