"""Operating the real server: overload, probes under load, draining on SIGTERM, JSON logs."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import torch

from tests.e2e.serving import Server, running_server
from tests.helpers import assert_error, to_base64

pytestmark = pytest.mark.e2e

# Long enough to hold a compute slot for a few seconds on any machine (about 3 s on this project's
# 2-core machine with the step machine, about 16 s without it), short enough to finish. While the
# first of two such runs computes, the second waits in the queue: the test's polls must see that,
# even when a slow poll comes late.
LONG_RUN = {"objective": "rosenbrock", "x0": [0.0, 0.0], "steps": 400_000, "record_every": 400_000, "report": "summary"}


def metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def wait_for(condition: str, check: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(0.05)


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[Server]:
    with running_server(
        tmp_path / "server.log",
        GRADIENT_MAX_CONCURRENCY="1",
        GRADIENT_MAX_QUEUE="1",
        GRADIENT_RETRY_AFTER_S="3",
        GRADIENT_DRAIN_S="1.5",
        GRADIENT_SHUTDOWN_GRACE_S="60",
        GRADIENT_LOG_FORMAT="json",
        GRADIENT_REQUEST_TIMEOUT_S="600",
    ) as started:
        yield started


def test_overload_is_503_with_retry_after_and_probes_stay_quick(small_server: Server) -> None:
    base, *_ = small_server
    answers: list[int] = []

    def post_long() -> None:
        answers.append(httpx.post(f"{base}/v1/optimize", json=LONG_RUN, timeout=120).status_code)

    workers = [threading.Thread(target=post_long) for _ in range(2)]
    for worker in workers:
        worker.start()
    # One run holds the only slot, the other the only place in the queue.
    wait_for("a full pool", lambda: metric(base, "gradient_compute_running") == 1)
    wait_for("a full queue", lambda: metric(base, "gradient_compute_queued") == 1)

    refused = httpx.post(f"{base}/v1/optimize", json=LONG_RUN, timeout=60)
    assert_error(refused, 503, "overloaded")
    assert refused.headers["retry-after"] == "3"
    # Probes and metrics are answered by the event loop while the compute pool is full: before the
    # run in the queue has even started, let alone finished (an order of events, not a time limit).
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{base}{path}", timeout=60).status_code == 200
    assert metric(base, "gradient_compute_queued") == 1
    assert len(answers) == 0

    for worker in workers:
        worker.join(timeout=120)
    assert answers == [200, 200]  # nothing admitted was lost
    assert metric(base, 'gradient_rejections_total{reason="overloaded"}') == 1


def test_sigterm_drains_then_finishes_in_flight_work(small_server: Server) -> None:
    base, process, log = small_server
    answers: list[httpx.Response] = []
    worker = threading.Thread(
        target=lambda: answers.append(
            httpx.post(f"{base}/v1/optimize", json=LONG_RUN, headers={"x-request-id": "drain-test-1"}, timeout=120)
        )
    )
    worker.start()
    wait_for("the run to start", lambda: metric(base, "gradient_compute_running") == 1)

    process.send_signal(signal.SIGTERM)
    # While draining, the listener still accepts and /readyz tells load balancers to stop.
    draining = httpx.get(f"{base}/readyz", timeout=30)
    assert draining.status_code == 503
    assert draining.json() == {"status": "draining"}
    assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200

    worker.join(timeout=120)
    assert process.wait(timeout=60) == 0
    assert [answer.status_code for answer in answers] == [200]  # the run in flight finished
    assert answers[0].headers["x-request-id"] == "drain-test-1"

    lines = [orjson.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "service.access"]
    run = next(line for line in access if line["request_id"] == "drain-test-1")
    assert run["status"] == 200
    assert run["route"] == "/v1/optimize"
    assert run["method"] == "POST"
    assert any(line["message"] == "Application shutdown complete." for line in lines)


def test_two_workers_serve_and_stop_cleanly(tmp_path: Path) -> None:
    with running_server(tmp_path / "server.log", GRADIENT_WORKERS="2") as (base, process, log):
        with httpx.Client(base_url=base, timeout=30) as client:
            for _ in range(20):
                answer = client.post("/v1/activations/sigmoid", json={"input": [0.0]}, headers={"connection": "close"})
                assert answer.json()["output"] == [0.5]
            text = client.get("/metrics").text
        assert "gradient_http_requests_total" in text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        pids = {
            line.split("[")[-1].rstrip("]") for line in log.read_text().splitlines() if "Started server process" in line
        }
        assert len(pids) == 2  # two worker processes served


def test_a_long_computation_ends_at_its_budget_and_frees_its_slot(tmp_path: Path) -> None:
    """A chain of products of 1000 x 1000 matrices (an 8 MB input, within every size limit) and
    its gradient take several seconds of one thread; with a 2 s budget the request ends with a
    504 at most 1 s past it, and the only compute slot is free at once for the next request (no
    queue: a slot still held would answer 503)."""
    matrix = torch.randn(1000, 1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) / 40
    lines = ["a0 = tanh(W @ W)", *(f"a{i} = tanh(a{i - 1} @ W)" for i in range(1, 40)), "sum(a39)"]
    body = {"expression": "\n".join(lines), "inputs": {"W": to_base64(matrix)}, "dtype": "float64"}
    with running_server(
        tmp_path / "server.log",
        GRADIENT_MAX_CONCURRENCY="1",
        GRADIENT_MAX_QUEUE="0",
        GRADIENT_REQUEST_TIMEOUT_S="2",
        GRADIENT_MAX_FLOPS=str(10**15),
    ) as (base, *_):
        started = time.monotonic()
        response = httpx.post(f"{base}/v1/differentiate", json=body, timeout=120)
        elapsed = time.monotonic() - started
        assert_error(response, 504, "deadline_exceeded")
        assert "while computing" in response.json()["error"]["message"]
        assert elapsed < 2 + 1, f"answered {elapsed:.2f} s after it was sent"
        small = {"expression": "sum(x * x)", "inputs": {"x": [1.0, 2.0]}}
        after = httpx.post(f"{base}/v1/differentiate", json=small, timeout=60)
        assert after.status_code == 200, after.text
        assert after.json()["grad"] == {"x": [2.0, 4.0]}
