"""The seed's test case, 4 starts x 20,000 Adam steps (lr 1e-3) on Himmelblau's function:
POST /v1/optimize over HTTP against the seed's own loop run for those starts one after another.

Run: .venv/bin/python -m bench.optimize_seed [--steps N]
Prints seconds for the seed's loop, the service's first request and a warm one, and the ratios.
"""

from __future__ import annotations

import argparse
import time

import httpx
import torch

from bench.servers import uvicorn_server

STARTS = [[1.0, 0.0], [-4.0, 0.0], [4.0, 0.0], [0.0, 0.0]]


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
    with uvicorn_server("service.main:app", ready_path="/readyz") as base, httpx.Client(timeout=600) as client:
        timings = []
        for _ in range(2):
            started = time.perf_counter()
            response = client.post(f"{base}/v1/optimize", json=body)
            timings.append(time.perf_counter() - started)
            response.raise_for_status()
    finals = [run["x"] for run in response.json()["runs"]]
    difference = max(
        abs(a - b) for got, want in zip(finals, seed_finals, strict=True) for a, b in zip(got, want, strict=True)
    )
    print(
        f"seed's case: {len(STARTS)} starts x {args.steps} Adam steps, float32; largest |x - seed x| = {difference:.2e}"
    )
    print(f"seed's loop, start after start:   {seed_s:8.2f} s")
    print(f"service, first request over HTTP: {timings[0]:8.2f} s   {seed_s / timings[0]:6.1f}x")
    print(f"service, warm request over HTTP:  {timings[1]:8.2f} s   {seed_s / timings[1]:6.1f}x")


if __name__ == "__main__":
    main()
