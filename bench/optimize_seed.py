"""The seed's test case, 4 starts x 20,000 Adam steps (lr 1e-3) on Himmelblau's function:
POST /v1/optimize over HTTP against the seed's own loop run for those starts one after another.

Run: .venv/bin/python -m bench.optimize_seed [--steps N]
Prints seconds for the seed's loop, the service's first request to a fresh server, a warm one
(after the background compile the first one asked for has finished), and the same objective
written as an expression the server has never seen, with the ratios.
"""

from __future__ import annotations

import argparse
import time

import httpx
import torch

from bench.servers import uvicorn_server

STARTS = [[1.0, 0.0], [-4.0, 0.0], [4.0, 0.0], [0.0, 0.0]]


def never_seen_expression(tag: str) -> str:
    """Himmelblau's function in the expression language, with names the server has not met."""
    return f"u_{tag} = x[0]\nv_{tag} = x[1]\n(u_{tag}**2 + v_{tag} - 11)**2 + (u_{tag} + v_{tag}**2 - 7)**2"


def himmelblau(x: torch.Tensor) -> torch.Tensor:
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


def seed_loop(steps: int) -> tuple[float, list[list[float]]]:
    """The seed's code, verbatim in substance, once per start."""
    started = time.perf_counter()
    finals = []
    for start in STARTS:
        x = torch.tensor(start, requires_grad=True)
        optimizer = torch.optim.Adam([x], lr=1e-3)
        for _ in range(steps):
            pred = himmelblau(x)
            optimizer.zero_grad()
            pred.backward()
            optimizer.step()
        finals.append(x.tolist())
    return time.perf_counter() - started, finals


def compiles(client: httpx.Client, base: str) -> dict[str, float]:
    """Finished compiles by outcome, and their seconds, from the server's /metrics."""
    seen = {"compiled": 0.0, "failed": 0.0, "seconds": 0.0}
    for line in client.get(f"{base}/metrics").text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("gradient_compilations_seconds_count"):
            seen["failed" if "failed" in name else "compiled"] += float(value)
        elif name.startswith("gradient_compilations_seconds_sum"):
            seen["seconds"] += float(value)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20_000)
    args = parser.parse_args()
    body = {
        "objective": "himmelblau",
        "starts": STARTS,
        "optimizer": {"name": "adam", "lr": 1e-3},
        "steps": args.steps,
        "record_every": 2_000,
        "dtype": "float32",
    }
    seed_s, seed_finals = seed_loop(args.steps)
    expression = {**body, "objective": {"expression": never_seen_expression(str(time.time_ns())), "variable": "x"}}
    server = uvicorn_server("service.main:app", env={"GRADIENT_COMPILE": "true"}, ready_path="/readyz")
    with server as base, httpx.Client(timeout=600) as client:
        timings, responses = [], []
        for index, request in enumerate((body, body, expression)):
            if index == 1:  # warm: once the compile the first request asked for has finished
                waited = time.perf_counter()
                while not compiles(client, base)["compiled"] + compiles(client, base)["failed"]:
                    if time.perf_counter() - waited > 600:
                        break
                    time.sleep(0.5)
                seen = compiles(client, base)
                print(f"background compile: {seen['seconds']:.1f} s, outcome {seen}", flush=True)
            started = time.perf_counter()
            response = client.post(f"{base}/v1/optimize", json=request)
            timings.append(time.perf_counter() - started)
            response.raise_for_status()
            responses.append(response.json())
    difference = max(
        abs(a - b)
        for response in responses
        for run, want in zip(response["runs"], seed_finals, strict=True)
        for a, b in zip(run["x"], want, strict=True)
    )
    print(
        f"seed's case: {len(STARTS)} starts x {args.steps} Adam steps, float32; largest |x - seed x| = {difference:.2e}"
    )
    print(f"seed's loop, start after start:   {seed_s:8.2f} s")
    print(f"service, first request over HTTP: {timings[0]:8.2f} s   {seed_s / timings[0]:6.1f}x")
    print(f"service, warm request over HTTP:  {timings[1]:8.2f} s   {seed_s / timings[1]:6.1f}x")
    print(f"service, never-seen expression:   {timings[2]:8.2f} s   {seed_s / timings[2]:6.1f}x")


if __name__ == "__main__":
    main()
