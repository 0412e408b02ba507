"""The service under load at 1x and 10x its capacity, with wrk: p50, p99 and status counts.

Run: .venv/bin/python -m bench.load [--duration S] [--concurrency N] [--queue Q]
Starts the service under uvicorn (one worker, GRADIENT_MAX_CONCURRENCY=N, GRADIENT_MAX_QUEUE=Q) and
loads it with a request that goes through the compute pool (a 200-step Adam run on the sphere).
Capacity is N + Q requests at once (running or waiting); wrk keeps that many connections busy,
then ten times as many. Past capacity the service must answer 503 at once (with Retry-After),
never drop a connection, and still finish work: the script fails (exit status 1) unless 200s came
back at both loads, and on any status other than 200, 429 and 503, any socket error or any failed
probe. Meanwhile it times /healthz and /metrics every 50 ms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import threading
import time

import httpx
import orjson

from bench.servers import uvicorn_server
from bench.wrk import WrkResult, run_wrk

ALLOWED = {200, 429, 503}
BODY = {"objective": "sphere", "x0": [1.0, -2.0, 0.5], "steps": 200, "record_every": 200}


def probe_latencies(base: str, stop: threading.Event, out: dict[str, list[float]]) -> None:
    """Time /healthz and /metrics every 50 ms until ``stop``."""
    with httpx.Client(base_url=base, timeout=10) as client:
        while not stop.is_set():
            for path in ("/healthz", "/metrics"):
                started = time.perf_counter()
                status = client.get(path).status_code
                out.setdefault(path, []).append((time.perf_counter() - started) * 1000)
                if status != 200:
                    out.setdefault("failures", []).append(float(status))
            time.sleep(0.05)


def wait_until_idle(base: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        busy = [
            line
            for line in text.splitlines()
            if line.startswith(("gradient_compute_running ", "gradient_compute_queued "))
        ]
        if all(float(line.split()[1]) == 0 for line in busy):
            return
        time.sleep(0.1)
    raise SystemExit("the compute pool did not become idle")


def statuses(result: WrkResult) -> str:
    return ", ".join(f"{code}: {count}" for code, count in sorted(result.statuses.items()))


def row(label: str, result: WrkResult) -> str:
    return (
        f"{label:22s} {result.requests_per_s:9.0f} req/s  p50 {result.p50_ms:8.2f} ms  p99 {result.p99_ms:8.2f} ms  "
        f"[{statuses(result)}]  {result.socket_errors or 'no socket errors'}"
    )


def problems_in(results: dict[str, WrkResult], probes: dict[str, dict[str, list[float]]]) -> list[str]:
    """What fails the run: a load with no 200 (the service must still finish work past capacity),
    a status other than 200, 429 and 503, a socket error, a probe that was not answered 200."""
    problems = [
        f"{label}: no 200 came back, only {statuses(result) or 'no status at all'}"
        for label, result in results.items()
        if not result.statuses.get(200)
    ]
    problems += [
        f"{label}: unexpected statuses {sorted(set(result.statuses) - ALLOWED)}"
        for label, result in results.items()
        if set(result.statuses) - ALLOWED
    ]
    problems += [f"{label}: {result.socket_errors}" for label, result in results.items() if result.socket_errors]
    problems += [f"{label} probe failures: {p['failures']}" for label, p in probes.items() if p.get("failures")]
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--concurrency", type=int, default=1, help="GRADIENT_MAX_CONCURRENCY")
    parser.add_argument("--queue", type=int, default=4, help="GRADIENT_MAX_QUEUE")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    capacity = args.concurrency + args.queue
    env = {
        "GRADIENT_MAX_CONCURRENCY": str(args.concurrency),
        "GRADIENT_MAX_QUEUE": str(args.queue),
        "GRADIENT_ACCESS_LOG": "false",
    }
    with uvicorn_server("service.main:app", env=env, ready_path="/readyz") as base:
        body = orjson.dumps(BODY)
        first = httpx.post(f"{base}/v1/optimize", content=body, headers={"content-type": "application/json"})
        first.raise_for_status()
        print(f"capacity: {args.concurrency} computing + {args.queue} waiting = {capacity}; body {body.decode()}")
        run_wrk(f"{base}/v1/optimize", body, 2, capacity, timeout_s=30)  # warm-up
        results: dict[str, WrkResult] = {}
        probes: dict[str, dict[str, list[float]]] = {}
        for factor in (1, 10):
            label = f"{factor}x"
            wait_until_idle(base)  # wrk leaves its last requests running when it stops
            stop = threading.Event()
            probes[label] = {}
            prober = threading.Thread(target=probe_latencies, args=(base, stop, probes[label]))
            prober.start()
            results[label] = run_wrk(
                f"{base}/v1/optimize", body, args.duration, capacity * factor, threads=2, timeout_s=30
            )
            stop.set()
            prober.join()
        print()
        for label, result in results.items():
            print(row(f"{label} ({capacity * int(label[:-1])} conns)", result))
        for label, timings in probes.items():
            for path in ("/healthz", "/metrics"):
                times = timings.get(path, [])
                if len(times) < 2:  # too few for a p90 (a run of a second or less)
                    print(f"{path} during {label}: {len(times)} probes {[round(t, 1) for t in times]} ms")
                    continue
                print(
                    f"{path} during {label}: {len(times)} probes, median {statistics.median(times):.1f} ms, "
                    f"p90 {statistics.quantiles(times, n=10)[-1]:.1f} ms, max {max(times):.1f} ms"
                )
        problems = problems_in(results, probes)
    print(
        "OK: 200s at both loads, only 200, 429 and 503, no socket errors"
        if not problems
        else "FAILED: " + "; ".join(problems)
    )
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
