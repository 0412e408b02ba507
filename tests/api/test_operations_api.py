"""Operational behaviour in-process: API keys, CORS, gzip, request ids, metrics, time budgets."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
import torch
from fastapi.responses import JSONResponse
from prometheus_client.parser import text_string_to_metric_families
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.endpoints import ComputePool
from service.api.endpoints import _context as compute_context
from service.api.routes import activations as activations_route
from service.compute import wire as tensors
from service.compute.ops.activations import evaluate_activation
from service.config import Settings
from service.logs import JsonFormatter, TextFormatter
from service.main import create_app
from tests.conftest import AppClient, ClientFactory
from tests.helpers import assert_error

SIGMOID = {"input": [0.5, -0.5]}
JSON_HEADERS = {"content-type": "application/json"}


def samples(client: AppClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus-client's own parser."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


@pytest.fixture
def keyed(make_client: ClientFactory) -> AppClient:
    return make_client(api_keys="first-key, second-key")


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong"}, {"authorization": "first-key"}, {"authorization": "Basic Zmlyc3Q="}],
    ids=["none", "wrong", "no-scheme", "basic"],
)
def test_a_missing_or_wrong_key_is_401(keyed: AppClient, headers: dict[str, str]) -> None:
    response = keyed.post("/v1/activations/sigmoid", json=SIGMOID, headers=headers)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    assert_error(keyed.get("/v1/activations", headers=headers), 401, "unauthorized")


@pytest.mark.parametrize("key", ["first-key", "second-key"])
def test_every_configured_key_opens_the_api(keyed: AppClient, key: str) -> None:
    response = keyed.post("/v1/activations/sigmoid", json=SIGMOID, headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert keyed.get("/v1/optimizers", headers={"authorization": f"bearer {key}"}).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
def test_probes_metrics_and_docs_need_no_key(keyed: AppClient, path: str) -> None:
    assert keyed.get(path).status_code == 200


def test_refused_keys_are_counted(keyed: AppClient) -> None:
    keyed.get("/v1/info")
    assert samples(keyed)[("gradient_rejections_total", (("reason", "unauthorized"),))] >= 1


def test_cors_allows_only_the_configured_origins(make_client: ClientFactory) -> None:
    client = make_client(cors_origins="https://play.example", api_keys="k")
    preflight = {"origin": "https://play.example", "access-control-request-method": "POST"}
    allowed = client.request("OPTIONS", "/v1/activations/sigmoid", headers=preflight)
    assert allowed.status_code == 200  # a preflight carries no key and needs none
    assert allowed.headers["access-control-allow-origin"] == "https://play.example"
    refused = client.request(
        "OPTIONS", "/v1/activations/sigmoid", headers={**preflight, "origin": "https://elsewhere.example"}
    )
    assert "access-control-allow-origin" not in refused.headers
    answer = client.post(
        "/v1/activations/sigmoid",
        json=SIGMOID,
        headers={"origin": "https://play.example", "authorization": "Bearer k"},
    )
    assert answer.headers["access-control-allow-origin"] == "https://play.example"
    assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()


def test_without_origins_no_cors_headers(client: AppClient) -> None:
    answer = client.post("/v1/activations/sigmoid", json=SIGMOID, headers={"origin": "https://play.example"})
    assert "access-control-allow-origin" not in answer.headers


def test_large_responses_are_gzipped_on_request(client: AppClient) -> None:
    body = {"input": [0.25] * 5000}
    zipped = client.post("/v1/activations/tanh", json=body, headers={"accept-encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    plain = client.post("/v1/activations/tanh", json=body, headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert zipped.json()["output"] == plain.json()["output"]  # httpx has already unzipped it
    small = client.post("/v1/activations/tanh", json=SIGMOID, headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in small.headers


def test_request_ids_are_echoed_or_made(client: AppClient) -> None:
    given = client.post("/v1/activations/sigmoid", json=SIGMOID, headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = client.get("/healthz")
    other = client.get("/healthz")
    assert len(made.headers["x-request-id"]) == 32
    assert made.headers["x-request-id"] != other.headers["x-request-id"]
    unsafe = client.get("/healthz", headers={"x-request-id": "has space"})
    assert unsafe.headers["x-request-id"] != "has space"
    error = client.post("/v1/activations/nope", json=SIGMOID, headers={"x-request-id": "err-1"})
    assert error.status_code == 404
    assert error.headers["x-request-id"] == "err-1"


def test_metrics_count_requests_by_route_template_and_time_compute_by_op(make_client: ClientFactory) -> None:
    client = make_client()
    for _ in range(3):
        client.post("/v1/activations/sigmoid", json=SIGMOID)
    client.post("/v1/activations/relu", json=SIGMOID)
    client.post("/v1/activations/sigmoid", json={"input": [[1.0], [1.0, 2.0]]})
    client.get("/no/such/route")
    found = samples(client)
    route = "/v1/activations/{name}"
    key = (("method", "POST"), ("route", route), ("status", "200"))
    assert found[("gradient_http_requests_total", key)] == 4
    assert found[("gradient_http_requests_total", (("method", "POST"), ("route", route), ("status", "400")))] == 1
    assert found[("gradient_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    assert found[("gradient_http_request_duration_seconds_count", (("method", "POST"), ("route", route)))] == 5
    assert found[("gradient_compute_duration_seconds_count", (("op", "activation/sigmoid"),))] == 4
    assert found[("gradient_compute_duration_seconds_count", (("op", "activation/relu"),))] == 1
    assert found[("gradient_http_requests_in_flight", ())] == 1  # the scrape itself
    assert found[("gradient_compute_running", ())] == 0
    assert found[("gradient_compute_queued", ())] == 0


def test_a_computation_past_the_time_budget_is_504(make_client: ClientFactory) -> None:
    client = make_client(request_timeout_s=1e-6)
    response = client.post("/v1/differentiate", json={"expression": "x * 2", "inputs": {"x": 1.0}})
    assert "time budget" in assert_error(response, 504, "deadline_exceeded")["message"]
    assert samples(client)[("gradient_rejections_total", (("reason", "deadline"),))] == 1


def test_log_lines_in_both_formats() -> None:
    record = logging.LogRecord("service.access", logging.INFO, __file__, 1, "GET /healthz %d", (200,), None)
    record.request_id = "r-1"
    line = orjson.loads(JsonFormatter().format(record))
    assert line["message"] == "GET /healthz 200"
    assert line["request_id"] == "r-1"
    assert line["level"] == "info"
    assert line["logger"] == "service.access"
    assert line["time"].endswith("Z")
    text = TextFormatter().format(record)
    assert "INFO service.access: GET /healthz 200 request_id=r-1" in text


def test_out_of_memory_is_a_503_and_the_next_request_succeeds(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU's out-of-memory error, raised where the inputs move to the device (tests/test_cuda.py
    exhausts a real GPU)."""
    client = make_client(compute_processes=0)
    real_decode = tensors.decode
    failures = iter([True])

    def decode_once_out_of_memory(*args: Any, **kwargs: Any) -> torch.Tensor:
        if next(failures, False):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(compute_context, "decode", decode_once_out_of_memory)
    refused = client.post("/v1/activations/sigmoid", json=SIGMOID)
    assert_error(refused, 503, "device_out_of_memory")
    assert refused.headers["retry-after"] == "1"
    assert client.post("/v1/activations/sigmoid", json=SIGMOID).status_code == 200


def test_keys_are_needed_under_a_root_path_too() -> None:
    """Behind a proxy that strips a prefix (uvicorn --root-path, or a parent app's mount), the
    scope's path starts with the root path: /v1/ is still what the router matches."""
    prefixed = AppClient(create_app(Settings(api_keys="k")), root_path="/api")
    try:
        assert_error(prefixed.get("/api/v1/info"), 401, "unauthorized")
        assert_error(prefixed.post("/api/v1/activations/sigmoid", json=SIGMOID), 401, "unauthorized")
        assert prefixed.get("/api/v1/info", headers={"authorization": "Bearer k"}).status_code == 200
        assert prefixed.get("/api/healthz").status_code == 200
    finally:
        prefixed.close()


def test_an_unexpected_error_is_a_500_with_the_request_id(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(compute_processes=0)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(activations_route, "evaluate_activation", broken)
    response = client.post("/v1/activations/sigmoid", json=SIGMOID, headers={"x-request-id": "bug-1"})
    assert_error(response, 500, "internal_error")
    assert response.headers["x-request-id"] == "bug-1"
    key = ("gradient_http_requests_total", (("method", "POST"), ("route", "/v1/activations/{name}"), ("status", "500")))
    assert samples(client)[key] == 1


def test_a_small_body_asking_for_a_jacobian_goes_to_the_compute_pool(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(compute_processes=0)
    pool = client.app.compute_pool
    assert isinstance(pool, ComputePool)
    pooled: list[str] = []
    run = pool.run

    async def recording_run(job: Any, deadline: float, *, reserved: object | None = None) -> Any:
        pooled.append("run")
        return await run(job, deadline, reserved=reserved)

    monkeypatch.setattr(pool, "run", recording_run)
    assert client.post("/v1/activations/softmax", json={"input": [0.1, 0.2, 0.3]}).status_code == 200
    assert pooled == []  # small and cheap: computed on the event loop
    answer = client.post("/v1/activations/softmax", json={"input": [0.1, 0.2, 0.3], "jacobian": True})
    assert answer.status_code == 200
    assert pooled == ["run"]  # as small, but a Jacobian can be large: in the pool
    assert pool.threads.total_tokens == 1  # the pool's own threads, as many as its slots


def test_access_log_lines_cannot_be_forged(client: AppClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="service.access"):
        client.get("/nothing%0AGET%20/forged%20200")
    (record,) = [r for r in caplog.records if r.name == "service.access"]
    assert "\n" not in record.getMessage()
    assert record.getMessage().startswith("GET /nothing%0AGET%20/forged%20200 404")


def test_numbers_past_float32_range_are_infinity(client: AppClient) -> None:
    response = client.post("/v1/activations/relu", json={"input": [1e39, -1e39, 1.0]})
    assert response.json()["output"] == ["Infinity", 0.0, 1.0]


def test_the_time_budget_is_checked_when_a_computation_ends(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(request_timeout_s=0.2, compute_processes=0)
    real = evaluate_activation

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)  # a computation longer than the whole budget, started in time
        return real(*args, **kwargs)

    monkeypatch.setattr(activations_route, "evaluate_activation", slow)
    error = assert_error(client.post("/v1/activations/sigmoid", json=SIGMOID), 504, "deadline_exceeded")
    assert "ran out; send less" in error["message"]  # not the message of a wait for a slot


OPENTELEMETRY_SCRIPT = """
import json
import anyio, httpx
from opentelemetry import trace
from service.config import Settings
from service.main import create_app

names = []

class RecordingSpan(trace.NonRecordingSpan):
    def update_name(self, name):
        names.append(name)

class RecordingTracer(trace.NoOpTracer):
    def start_span(self, name, *args, **kwargs):
        names.append(name)
        return RecordingSpan(trace.INVALID_SPAN_CONTEXT)

    def start_as_current_span(self, name, *args, **kwargs):
        names.append(name)
        return super().start_as_current_span(name, *args, **kwargs)

class RecordingProvider(trace.TracerProvider):  # FastAPI ignores a no-op provider
    def get_tracer(self, *args, **kwargs):
        return RecordingTracer()

trace.set_tracer_provider(RecordingProvider())

async def spans(enabled):
    names.clear()
    app = create_app(Settings(opentelemetry=enabled, compile=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.post("/v1/activations/sigmoid", json={"input": [1.0]})
            assert response.status_code == 200, response.text
    return sorted(set(names))

print(json.dumps({"on": anyio.run(spans, True), "off": anyio.run(spans, False)}))
"""


def test_fastapi_opentelemetry_spans_only_when_asked_for() -> None:
    """GRADIENT_OPENTELEMETRY turns on FastAPI's own instrumentation, which then reports to the
    configured tracer provider. In a subprocess: the provider is process-wide and set once."""
    done = subprocess.run(
        [sys.executable, "-c", OPENTELEMETRY_SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    spans = orjson.loads(done.stdout)
    assert "POST /v1/activations/{name}" in spans["on"], spans
    assert spans["off"] == [], spans


class Teapot(Exception):
    pass


LANE_CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ok": ("POST", "/v1/activations/softplus", {"json": {"input": [[1.0, -2.0]], "params": {"beta": 2.0}}}),
    "loss": ("POST", "/v1/losses/mse", {"json": {"input": [1.0, 2.0], "target": [1.5, 2.5]}}),
    "not json": ("POST", "/v1/activations/sigmoid", {"content": b"input=1"}),
    "malformed": ("POST", "/v1/activations/sigmoid", {"content": b'{"input": [1,', "headers": JSON_HEADERS}),
    "off schema": ("POST", "/v1/activations/sigmoid", {"json": {"input": [1.0], "dtype": "float16"}}),
    "bad param": ("POST", "/v1/activations/celu", {"json": {"input": [1.0], "params": {"alpha": 0.0}}}),
    "unknown name": ("POST", "/v1/activations/nope", {"json": {"input": [1.0]}}),
    "shape mismatch": ("POST", "/v1/losses/mse", {"json": {"input": [1.0, 2.0], "target": [1.0, 2.0, 3.0]}}),
    "wrong method": ("GET", "/v1/activations/sigmoid", {}),
    "head": ("HEAD", "/v1/activations/sigmoid", {}),
    "trailing slash": ("POST", "/v1/activations/sigmoid/", {"json": {"input": [1.0]}}),
    "status handler": ("POST", "/v1/activations/tanh", {"json": {"input": [1.0]}}),
    "class handler": ("POST", "/v1/activations/relu", {"json": {"input": [1.0]}}),
    "unexpected": ("POST", "/v1/activations/elu", {"json": {"input": [1.0]}}),
}


def without_timing(body: Any) -> Any:
    """The body without what differs from one request to the next: time and request id."""
    if isinstance(body, dict) and isinstance(body.get("meta"), dict):
        return {**body, "meta": {**body["meta"], "elapsed_ms": None}}
    if isinstance(body, dict) and isinstance(body.get("error"), dict) and "request_id" in body["error"]:
        return {"error": {**body["error"], "request_id": None}}
    return body


def test_the_compute_lane_answers_as_the_router_does(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every outcome of a compute route, through the lane (the default) and through FastAPI's
    router (with OpenTelemetry on, the lane steps aside): the same status, headers and body."""

    def failing(spec: Any, *args: Any, **kwargs: Any) -> Any:
        if spec.name == "tanh":
            raise StarletteHTTPException(418, "short and stout", headers={"x-kettle": "on"})
        if spec.name == "relu":
            raise Teapot("boiling")
        if spec.name == "elu":
            raise KeyError("a bug")
        return evaluate_activation(spec, *args, **kwargs)

    async def teapot_status(request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": {"type": "teapot", "message": "by status"}}, status_code=418)

    async def teapot_class(request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": {"type": "teapot", "message": str(exc)}}, status_code=418)

    monkeypatch.setattr(activations_route, "evaluate_activation", failing)
    answers = []
    for opentelemetry in (False, True):
        app = create_app(Settings(opentelemetry=opentelemetry, compile=False))
        app.add_exception_handler(418, teapot_status)
        app.add_exception_handler(Teapot, teapot_class)
        client = AppClient(app)
        try:
            answers.append(
                {
                    name: (
                        (response := client.request(method, url, **options)).status_code,
                        # (the length varies with elapsed_ms; the bodies are compared)
                        {k: v for k, v in response.headers.items() if k not in {"x-request-id", "content-length"}},
                        without_timing(response.json()) if response.content else None,
                    )
                    for name, (method, url, options) in LANE_CASES.items()
                }
            )
        finally:
            client.close()
    lane, router = answers
    assert lane == router
    statuses = {name: status for name, (status, _, _) in lane.items()}
    assert statuses == {
        "ok": 200,
        "loss": 200,
        "not json": 415,
        "malformed": 400,
        "off schema": 422,
        "bad param": 422,
        "unknown name": 404,
        "shape mismatch": 400,
        "wrong method": 405,
        "head": 405,
        "trailing slash": 307,
        "status handler": 418,
        "class handler": 418,
        "unexpected": 500,
    }
    assert lane["status handler"][2] == {"error": {"type": "teapot", "message": "by status"}}
    assert lane["class handler"][2] == {"error": {"type": "teapot", "message": "boiling"}}
