"""Probes, /v1/info and the OpenAPI document."""

from __future__ import annotations

import torch

from service import __version__
from tests.conftest import AppClient, ClientFactory


def test_healthz(client: AppClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_after_startup(client: AppClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json()["status"] == "ready"


def test_info_reports_versions_devices_and_limits(make_client: ClientFactory) -> None:
    data = make_client(max_elements=1234).get("/v1/info").json()
    assert data["version"] == __version__
    assert data["torch_version"] == torch.__version__
    assert "cpu" in data["devices"]
    assert data["default_device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert data["dtypes"] == ["float32", "float64"]
    assert data["limits"]["max_elements"] == 1234


def test_every_request_body_in_the_openapi_has_an_example(client: AppClient) -> None:
    schema = client.get("/openapi.json").json()
    bodies = [
        (path, operation)
        for path, operations in schema["paths"].items()
        for operation in operations.values()
        if "requestBody" in operation
    ]
    assert bodies
    for path, operation in bodies:
        body = operation["requestBody"]
        assert body["required"] is True
        model = body["content"]["application/json"]["schema"]
        if "$ref" in model:
            model = schema["components"]["schemas"][model["$ref"].rsplit("/", 1)[1]]
        assert model.get("examples"), path
        assert model["required"], path


def test_openapi_documents_error_bodies(client: AppClient) -> None:
    schema = client.get("/openapi.json").json()
    responses = schema["paths"]["/v1/activations/{name}"]["post"]["responses"]
    assert {"200", "400", "404", "413", "422"} <= set(responses)


def test_info_with_an_absent_configured_gpu(make_client: ClientFactory) -> None:
    data = make_client(device="cuda:7").get("/v1/info").json()
    expected = "cuda:7" if torch.cuda.device_count() > 7 else "cuda:7 (configured, but not available)"
    assert data["default_device"] == expected
