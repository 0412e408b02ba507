"""Shared fixtures: an app built from explicit settings, and a synchronous httpx client that
drives it in-process (lifespan included) through httpx's ASGI transport."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import anyio.from_thread
import httpx
import pytest
from hypothesis import HealthCheck, settings

from service.config import Settings
from service.main import GradientService, create_app

# Background compiles take tens of seconds of CPU; only the tests about them turn them on (for
# apps built here and servers started from here alike).
os.environ.setdefault("GRADIENT_COMPILE", "false")
# Saved formulas go to a database of the test run's own (for apps built here and servers started
# from here alike), never to ./data.
if "GRADIENT_DATA_DIR" not in os.environ:
    os.environ["GRADIENT_DATA_DIR"] = tempfile.mkdtemp(prefix="gradient-tests-")
    atexit.register(shutil.rmtree, os.environ["GRADIENT_DATA_DIR"], ignore_errors=True)

# Hypothesis profiles: "quick" (the default, for CI and local runs) and "thorough" (a nightly-style
# run: HYPOTHESIS_PROFILE=thorough scripts/test). Tests that set max_examples themselves scale it
# with examples(n).
settings.register_profile("quick", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=1_000, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))


class AppClient:
    """httpx against an ASGI app, on an event loop in a background thread."""

    def __init__(self, app: GradientService, root_path: str = "") -> None:
        self._stack = contextlib.ExitStack()
        self._portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal())
        self._stack.enter_context(self._portal.wrap_async_context_manager(app.router.lifespan_context(app)))
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, root_path=root_path)
        self._client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        self.app = app

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self._portal.call(partial(self._client.request, method, url, **kwargs))
        return response

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        self._portal.call(self._client.aclose)
        self._stack.close()


ClientFactory = Callable[..., AppClient]


@pytest.fixture
def make_client() -> Iterator[ClientFactory]:
    """Build a client for an app with the given setting overrides."""
    clients: list[AppClient] = []

    def factory(**overrides: Any) -> AppClient:
        clients.append(AppClient(create_app(Settings(**overrides))))
        return clients[-1]

    yield factory
    for client in clients:
        client.close()


@pytest.fixture(scope="session")
def client() -> Iterator[AppClient]:
    app_client = AppClient(create_app(Settings()))
    yield app_client
    app_client.close()
