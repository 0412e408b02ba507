"""The client's tests run against the real service: one uvicorn server for the whole session
(``service_url``), and a ``Client`` on it per test (``client``). The autodiff adapters' tests in
this directory use the same fixtures. A test that uses a real server is marked ``e2e``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gradient_client import Client

from tests.e2e.serving import running_server


@pytest.fixture(scope="session")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a real server (``python -m service`` on a free port, default settings,
    one torch thread), ready to compute."""
    log = tmp_path_factory.mktemp("service") / "server.log"
    with running_server(log) as (url, _process, _log):
        yield url


@pytest.fixture
def client(service_url: str) -> Iterator[Client]:
    with Client(service_url) as opened:
        yield opened


SERVER_FIXTURES = {"service_url", "small_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
