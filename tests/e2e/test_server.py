"""End to end: the real console entry point serving on a real socket through uvicorn."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import httpx
import pytest
import torch

from tests.compute.test_expressions import REFUSED
from tests.e2e.serving import Server, running_server
from tests.helpers import assert_error, from_wire, to_base64

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    # A time budget no test reaches: only a client's disconnect can stop a run early.
    with running_server(log, GRADIENT_MAX_BODY_BYTES="100000", GRADIENT_REQUEST_TIMEOUT_S="3600") as started:
        yield started


def finished_computations(base: str, op: str) -> float:
    """How many ``op`` computations have ended (their compute-time histogram's count)."""
    name = f'gradient_compute_duration_seconds_count{{op="{op}"}} '
    lines = [line for line in httpx.get(f"{base}/metrics").text.splitlines() if line.startswith(name)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_probes_and_info(server: Server) -> None:
    base, *_ = server
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    info = httpx.get(f"{base}/v1/info").json()
    assert info["limits"]["max_body_bytes"] == 100000


def test_activation_json_and_base64(server: Server) -> None:
    base, *_ = server
    x = torch.linspace(-3, 3, 50)
    data = httpx.post(f"{base}/v1/activations/tanh", json={"input": x.tolist(), "second_order": True}).json()
    t = torch.tanh(x)
    assert torch.equal(from_wire(data["output"], torch.float32), t)
    torch.testing.assert_close(from_wire(data["grad"], torch.float32), 1 - t * t)
    encoded = httpx.post(f"{base}/v1/activations/tanh", json={"input": to_base64(x), "encoding": "base64"}).json()
    assert torch.equal(from_wire(encoded["output"]), t)


def test_errors_over_the_wire(server: Server) -> None:
    base, *_ = server
    assert_error(httpx.post(f"{base}/v1/activations/tanh", json={"input": [[1], [2, 3]]}), 400, "ragged_array")
    assert_error(httpx.get(f"{base}/nowhere"), 404, "not_found")
    too_big = httpx.post(f"{base}/v1/activations/tanh", json={"input": [0.5] * 50_000})
    assert_error(too_big, 413, "body_too_large")

    def chunks() -> Iterator[bytes]:
        yield b'{"input": ['
        for _ in range(100):
            yield b"0.5," * 1000
        yield b"0.5]}"

    chunked = httpx.post(f"{base}/v1/activations/tanh", content=chunks(), headers={"content-type": "application/json"})
    assert_error(chunked, 413, "body_too_large")
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_sandbox_corpus_leaves_the_server_healthy(server: Server) -> None:
    base, *_ = server
    corpus = [*REFUSED, "-" * 9_000 + "x", "(" * 3_000 + "x" + ")" * 3_000, "9 ** 9 ** 9 ** 9"]
    with httpx.Client(base_url=base, timeout=30) as client:
        for source in corpus:
            response = client.post("/v1/differentiate", json={"expression": source, "inputs": {"x": [1.0]}})
            assert response.status_code in (200, 400, 413), (source, response.text)
        assert client.get("/healthz").json() == {"status": "ok"}
        ok = client.post("/v1/differentiate", json={"expression": "sum(x ** 2)", "inputs": {"x": [1.0, 2.0]}})
        assert ok.json()["grad"]["x"] == [2.0, 4.0]


def test_a_client_that_disconnects_stops_its_run(server: Server) -> None:
    base, *_ = server
    long_run = {"objective": "rosenbrock", "x0": [0.0, 0.0], "steps": 5_000_000, "record_every": 500}
    before = finished_computations(base, "optimize")
    with (
        httpx.Client(base_url=base, timeout=30) as client,
        client.stream("POST", "/v1/optimize", json=long_run, headers={"accept": "text/event-stream"}) as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines) == "event: progress"
        assert finished_computations(base, "optimize") == before  # the long run is under way
    # The stream is closed. The compute pool has one slot, and the server's time budget is an hour:
    # the next run can take the slot only once the long one has stopped, so it ends second.
    short = httpx.post(f"{base}/v1/optimize", json={"objective": "sphere", "x0": [1.0], "steps": 1}, timeout=120)
    assert short.status_code == 200
    assert short.json()["runs"][0]["steps"] == 1
    assert finished_computations(base, "optimize") == before + 2  # the long run ended, then the short one


def test_sigterm_stops_the_server_cleanly(server: Server) -> None:
    _, process, log = server
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0  # a graceful shutdown is a clean exit
    text = log.read_text()
    assert "Application shutdown complete" in text
    assert "Traceback" not in text
