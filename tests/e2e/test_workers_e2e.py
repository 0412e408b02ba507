"""End to end: the compute worker processes of a real server: a stream whose worker dies, no
child left behind however the server ends, and the goodput under ten times its capacity."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from bench import load
from tests.e2e.serving import running_server
from tests.helpers import assert_error

pytestmark = pytest.mark.e2e

LONG_STREAM = {"objective": "rosenbrock", "x0": [0.0, 0.0], "steps": 5_000_000, "record_every": 500}


def family(pid: int) -> dict[int, int]:
    """Every descendant of ``pid``, with its parent (read from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, int] = {}
    frontier = {pid}
    while frontier:
        children = {child: parent for child, parent in parents.items() if parent in frontier}
        found.update(children)
        frontier = set(children)
    return found


def workers_of(pid: int) -> list[int]:
    """The server's compute workers: its grandchildren (forked by its fork server)."""
    descendants = family(pid)
    return [child for child, parent in descendants.items() if parent != pid]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def none_left(pids: list[int], timeout_s: float = 20) -> list[int]:
    """Those of ``pids`` still running ``timeout_s`` later (polled)."""
    waited = 0.0
    while (left := [pid for pid in pids if alive(pid)]) and waited < timeout_s:
        time.sleep(0.1)
        waited += 0.1
    return left


def test_a_stream_whose_worker_dies_ends_with_an_error_event(tmp_path: Path) -> None:
    with running_server(tmp_path / "server.log") as (base, process, _):
        [worker] = workers_of(process.pid)
        with (
            httpx.Client(base_url=base, timeout=60) as client,
            client.stream("POST", "/v1/optimize", json=LONG_STREAM, headers={"accept": "text/event-stream"}) as stream,
        ):
            assert stream.status_code == 200
            lines = stream.iter_lines()
            assert next(lines) == "event: progress"
            os.kill(worker, signal.SIGKILL)
            rest = [line for line in lines if line]
        assert rest[-2] == "event: error"
        error = json.loads(rest[-1].removeprefix("data: "))["error"]
        assert error["type"] == "worker_crashed"
        answer = httpx.post(f"{base}/v1/differentiate", json={"expression": "x * x", "inputs": {"x": 3.0}}, timeout=120)
        assert answer.status_code == 200
        assert answer.json()["grad"] == {"x": 6.0}
        assert workers_of(process.pid) not in ([], [worker])


def test_sigterm_lets_computations_finish_and_leaves_no_child(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with running_server(log, GRADIENT_SHUTDOWN_GRACE_S="60") as (base, process, _):
        children = list(family(process.pid))
        assert workers_of(process.pid)
        answers: list[httpx.Response] = []
        run = {"objective": "sphere", "x0": [1.0, 2.0], "steps": 40_000, "record_every": 40_000}
        post = lambda: answers.append(httpx.post(f"{base}/v1/optimize", json=run, timeout=120))  # noqa: E731
        caller = threading.Thread(target=post)
        caller.start()
        while "gradient_compute_running 1.0" not in httpx.get(f"{base}/metrics").text:
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        caller.join(timeout=120)
        assert process.wait(timeout=60) == 0
    [answer] = answers
    assert answer.status_code == 200, answer.text
    assert answer.json()["runs"][0]["steps"] == 40_000
    assert none_left(children) == []
    assert "Traceback" not in log.read_text()


def test_a_killed_server_leaves_no_child(tmp_path: Path) -> None:
    with running_server(tmp_path / "server.log") as (_, process, _):
        children = list(family(process.pid))
        assert workers_of(process.pid)
        process.kill()
        process.wait()
    assert none_left(children) == []


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_goodput_at_ten_times_capacity(tmp_path: Path) -> None:
    """bench.load, short: at 10x, with wrk retrying every 503 at once, the service still answers
    at least half the runs it answers at 1x; only 200 and 503, no socket error, probes answered."""
    run = load.measure(duration_s=3, processes=1, concurrency=1, queue=4)
    assert run.problems() == [], run.results
    assert run.results["10x"].statuses.get(503)  # it was overloaded
    assert load.goodput(run.results) >= load.GOODPUT_MIN


def test_an_overloaded_worker_pool_answers_every_request(tmp_path: Path) -> None:
    """One worker, one waiting: of twenty concurrent long requests, each gets a 200 or a 503,
    and nothing hangs."""
    with running_server(tmp_path / "server.log", GRADIENT_MAX_QUEUE="1") as (base, *_):
        run = {"objective": "sphere", "x0": [1.0, 2.0], "steps": 2_000, "record_every": 2_000}
        answers: list[httpx.Response] = []
        callers = [
            threading.Thread(target=lambda: answers.append(httpx.post(f"{base}/v1/optimize", json=run, timeout=60)))
            for _ in range(20)
        ]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(timeout=120)
    assert len(answers) == 20
    assert {answer.status_code for answer in answers} <= {200, 503}
    assert sum(answer.status_code == 200 for answer in answers) >= 2
    for refused in (answer for answer in answers if answer.status_code == 503):
        assert_error(refused, 503, "overloaded")


def test_a_request_abandoned_before_it_began_is_never_computed(tmp_path: Path) -> None:
    """A request handed to a busy worker as its next, whose client gives up before the worker is
    free, is skipped by the worker: no computation is counted for it, and the worker serves on."""
    with running_server(tmp_path / "server.log", GRADIENT_REQUEST_TIMEOUT_S="600") as (base, *_):
        with (
            httpx.Client(base_url=base, timeout=60) as client,
            client.stream("POST", "/v1/optimize", json=LONG_STREAM, headers={"accept": "text/event-stream"}) as stream,
        ):
            lines = stream.iter_lines()  # (held: a dropped iterator would close the stream)
            assert next(lines) == "event: progress"
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{base}/v1/differentiate", json={"expression": "x * x", "inputs": {"x": 3.0}}, timeout=1)
        answer = httpx.post(f"{base}/v1/differentiate", json={"expression": "x * 2", "inputs": {"x": 3.0}}, timeout=60)
        assert answer.status_code == 200
        metrics = httpx.get(f"{base}/metrics").text
        assert 'gradient_compute_duration_seconds_count{op="differentiate"} 1.0' in metrics
        assert 'gradient_worker_restarts_total{reason="crashed"}' not in metrics
