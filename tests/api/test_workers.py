"""Compute worker processes, driven through the app in process (the workers are real processes):
crash isolation, hard deadlines, recycling, slots reserved for streams, and their metrics."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
import torch
from starlette.types import Message

from service.api.workers import WorkerPool
from service.api.workers._channel import INLINE_MAX
from tests.api.test_optimize_api import parse_events
from tests.conftest import AppClient, ClientFactory
from tests.helpers import assert_error, from_wire, to_base64

SMALL = {"expression": "sum(x ** 2)", "inputs": {"x": [1.0, 2.0]}, "derivatives": ["grad"]}
LONG_RUN = {"objective": "himmelblau", "x0": [0.0, 0.0], "steps": 2_000_000, "record_every": 2_000_000}
"""An Adam run of minutes: killed, or stopped by its deadline, long before it ends."""


def metric(client: AppClient, name: str) -> float:
    """One sample of /metrics by its full name and labels; 0 when absent."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    waited = 0.0
    while not condition():
        assert waited < timeout_s, f"{what}: not within {timeout_s:g} s"
        time.sleep(0.02)
        waited += 0.02


def worker_pids(client: AppClient) -> list[int]:
    pool = client.app.compute_pool
    assert isinstance(pool, WorkerPool)
    return [worker.process.pid for worker in pool.slots if worker is not None]


def in_background(call: Callable[[], httpx.Response]) -> tuple[ThreadPoolExecutor, Future[httpx.Response]]:
    executor = ThreadPoolExecutor(1)
    return executor, executor.submit(call)


def test_workers_compute_and_are_counted(make_client: ClientFactory) -> None:
    client = make_client(compute_processes=2)
    assert metric(client, "gradient_workers_alive") == 2
    assert len(set(worker_pids(client))) == 2 and os.getpid() not in worker_pids(client)
    answer = client.post("/v1/differentiate", json=SMALL)
    assert answer.status_code == 200, answer.text
    assert answer.json()["grad"] == {"x": [2.0, 4.0]}
    assert metric(client, 'gradient_compute_duration_seconds_count{op="differentiate"}') == 1  # relayed
    threads = make_client(compute_processes=0)
    assert metric(threads, "gradient_workers_alive") == 0
    assert threads.app.compute_pool.remote is False


def test_a_worker_killed_mid_run_fails_only_its_request(make_client: ClientFactory) -> None:
    """SIGKILL in the middle of a long run: that run gets a 500 worker_crashed, the request
    queued behind it in the same worker is computed by the new worker, later requests succeed,
    and /metrics counts the restart."""
    client = make_client()
    pool = client.app.compute_pool
    [first_pid] = worker_pids(client)
    executor, running = in_background(lambda: client.post("/v1/optimize", json=LONG_RUN))
    eventually(lambda: pool.running == 1, "the long run began")
    next_executor, queued = in_background(lambda: client.post("/v1/differentiate", json=SMALL))
    eventually(lambda: pool.waiting == 1, "the next request was handed to the worker")
    os.kill(first_pid, signal.SIGKILL)
    crashed = running.result(timeout=30)
    error = assert_error(crashed, 500, "worker_crashed")
    assert "replaced" in error["message"]
    assert crashed.headers["x-request-id"]
    survivor = queued.result(timeout=120)
    assert survivor.status_code == 200, survivor.text
    assert survivor.json()["grad"] == {"x": [2.0, 4.0]}
    executor.shutdown()
    next_executor.shutdown()
    [second_pid] = worker_pids(client)
    assert second_pid != first_pid
    assert client.post("/v1/differentiate", json=SMALL).status_code == 200
    assert metric(client, 'gradient_worker_restarts_total{reason="crashed"}') == 1
    assert metric(client, "gradient_workers_alive") == 1


def test_a_worker_that_ignores_its_deadline_is_ended(make_client: ClientFactory) -> None:
    """A worker that does not answer (stopped with SIGSTOP, as a computation stuck in one long
    native call would be) is killed at the budget plus the grace: a 504, and a new worker."""
    client = make_client(request_timeout_s=1.0, deadline_grace_s=0.5)
    [stuck] = worker_pids(client)
    os.kill(stuck, signal.SIGSTOP)
    started = time.monotonic()
    error = assert_error(client.post("/v1/differentiate", json=SMALL), 504, "deadline_exceeded")
    assert time.monotonic() - started < 30  # (a hang would not end at all)
    assert "0.5 s more, and was stopped" in error["message"]
    eventually(lambda: worker_pids(client) not in ([], [stuck]), "a new worker took the slot")
    assert client.post("/v1/differentiate", json=SMALL).status_code == 200
    assert metric(client, 'gradient_worker_restarts_total{reason="deadline"}') == 1
    with pytest.raises(ProcessLookupError):
        os.kill(stuck, 0)


def test_a_long_run_is_stopped_by_its_own_deadline_without_a_kill(make_client: ClientFactory) -> None:
    """Cooperation first: an optimisation checks its deadline between steps, so its worker
    answers the 504 itself and lives on."""
    client = make_client(request_timeout_s=1.0, deadline_grace_s=5.0)
    [pid] = worker_pids(client)
    assert_error(client.post("/v1/optimize", json=LONG_RUN), 504, "deadline_exceeded")
    assert worker_pids(client) == [pid]
    assert metric(client, 'gradient_worker_restarts_total{reason="deadline"}') == 0


@pytest.mark.parametrize(
    ("limits", "reason"),
    [({"worker_max_computations": 3}, "computations"), ({"worker_max_rss_mb": 1}, "memory")],
)
def test_workers_are_recycled_between_requests_without_failing_any(
    make_client: ClientFactory, limits: dict[str, Any], reason: str
) -> None:
    client = make_client(**limits)
    [first] = worker_pids(client)
    answers = [client.post("/v1/differentiate", json=SMALL) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [200] * 4
    eventually(lambda: worker_pids(client) != [first], "a successor took the slot")
    assert client.post("/v1/differentiate", json=SMALL).status_code == 200
    assert metric(client, f'gradient_worker_recycles_total{{reason="{reason}"}}') >= 1
    assert metric(client, 'gradient_worker_restarts_total{reason="crashed"}') == 0
    eventually(lambda: not _alive(first), "the old worker exited")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone but for its parent's wait
        return stat.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize("processes", [1, 0])
def test_a_stream_into_a_full_pool_is_a_503_not_an_error_event(make_client: ClientFactory, processes: int) -> None:
    """The stream's slot is taken before its 200: with every slot busy and no room to wait, the
    client gets a real 503 with Retry-After, in the worker processes and in threads alike."""
    client = make_client(compute_processes=processes, max_queue=0, request_timeout_s=2.0)
    executor, running = in_background(lambda: client.post("/v1/optimize", json=LONG_RUN))
    eventually(lambda: client.app.compute_pool.running == 1, "the long run began")
    streamed = client.post(
        "/v1/optimize", json={**LONG_RUN, "steps": 10, "record_every": 5}, headers={"accept": "text/event-stream"}
    )
    assert_error(streamed, 503, "overloaded")
    assert streamed.headers["retry-after"] == "1"
    assert_error(running.result(timeout=60), 504, "deadline_exceeded")
    executor.shutdown()
    again = client.post(
        "/v1/optimize", json={**LONG_RUN, "steps": 10, "record_every": 5}, headers={"accept": "text/event-stream"}
    )
    assert again.status_code == 200
    assert [kind for kind, _ in parse_events(again.text)] == ["progress", "progress", "progress", "result"]


def test_bodies_past_the_inline_size_cross_by_shared_memory(make_client: ClientFactory) -> None:
    """A request and a response each over the channel's inline size, and a stream whose every
    event is: byte for byte what torch computes, events in order, through the arenas."""
    client = make_client(compute_processes=1)
    pool = client.app.compute_pool
    assert isinstance(pool, WorkerPool)
    channel = pool.slots[0].channel if pool.slots[0] is not None else None
    assert channel is not None
    x = torch.linspace(-3.0, 3.0, 100_000, dtype=torch.float64)
    answer = client.post(
        "/v1/differentiate",
        json={"expression": "sum(sin(x) * x)", "inputs": {"x": to_base64(x)}, "dtype": "float64", "encoding": "base64"},
    )
    assert answer.status_code == 200, answer.text
    assert len(answer.content) > INLINE_MAX
    assert torch.equal(from_wire(answer.json()["grad"]["x"]), torch.cos(x) * x + torch.sin(x))
    starts = torch.randn(4_000, 2, generator=torch.Generator().manual_seed(0)).tolist()
    body = {"objective": "himmelblau", "starts": starts, "steps": 6, "record_every": 2, "report": "summary"}
    streamed = client.post("/v1/optimize", json=body, headers={"accept": "text/event-stream"})
    events = parse_events(streamed.text)
    assert [kind for kind, _ in events] == ["progress"] * 4 + ["result"]
    assert [data["step"] for _, data in events[:4]] == [0, 2, 4, 6]
    assert min(len(orjson.dumps(data)) for _, data in events) > INLINE_MAX
    plain = client.post("/v1/optimize", json=body).json()
    assert events[-1][1]["summary"] == plain["summary"]
    assert os.fstat(channel.outgoing.fd).st_size > INLINE_MAX  # requests went through the arena
    assert os.fstat(channel.incoming.fd).st_size > INLINE_MAX  # and so did responses


def test_a_stream_that_never_starts_gives_its_reserved_slot_back(make_client: ClientFactory) -> None:
    """In threads, a stream takes its slot before its response starts; if sending the start
    fails (the client is gone), the slot is free again: with one slot and no queue, the next
    request is computed, not refused."""
    client = make_client(compute_processes=0, max_queue=0)
    app = client.app
    body = orjson.dumps({**LONG_RUN, "steps": 10, "record_every": 5})

    async def call() -> None:
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            raise OSError("the client is gone")

        headers = [(b"content-type", b"application/json"), (b"accept", b"text/event-stream")]
        scope = {"type": "http", "method": "POST", "path": "/v1/optimize", "headers": headers, "query_string": b""}
        with pytest.raises(OSError, match="the client is gone"):
            await app(scope, receive, send)

    client._portal.call(call)
    assert app.compute_pool.running == 0
    assert client.post("/v1/differentiate", json=SMALL).status_code == 200
