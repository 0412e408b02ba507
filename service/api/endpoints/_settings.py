"""The app's settings as routes read them: directly, or as a FastAPI dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

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
