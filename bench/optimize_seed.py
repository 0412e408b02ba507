"""The seed's test case, 4 starts x 20,000 Adam steps (lr 1e-3) on Himmelblau's function:
POST /v1/optimize over HTTP against two baselines run side by side in the same process:

- the seed's own loop, run for those starts one after another;
- eager batched torch, the obvious stronger loop: one [4, 2] parameter holding every start,
  torch.optim.Adam with its default settings (lr 1e-3; on a CPU torch picks its single-tensor
  implementation, neither foreach nor fused), backward each step.

Run: .venv/bin/python -m bench.optimize_seed [--steps N]   (--steps 2000 for a quick run)
Prints seconds for both baselines, the service's first request to a fresh server, a warm one
(after the background compile the first one asked for has finished; runs shorter than
GRADIENT_COMPILE_MIN_STEPS, 10,000 by default, ask for none and are not waited for), and the
same objective written as an expression the server has never seen, each with its ratio against
both baselines.
"""

from __future__ import annotations

import argparse
import time

import httpx
import torch

from bench.servers import uvicorn_server
from service.config import Settings

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


def himmelblau_rows(x: torch.Tensor) -> torch.Tensor:
    """Himmelblau's function of each row of an [N, 2] tensor."""
    return (x[:, 0] ** 2 + x[:, 1] - 11) ** 2 + (x[:, 0] + x[:, 1] ** 2 - 7) ** 2


def eager_batched(steps: int) -> tuple[float, list[list[float]]]:
    """Every start in one [N, 2] parameter, torch.optim.Adam with its defaults, backward each step."""
    started = time.perf_counter()
    x = torch.tensor(STARTS, requires_grad=True)
    optimizer = torch.optim.Adam([x], lr=1e-3)  # lr 1e-3 is Adam's default too
    for _ in range(steps):
        optimizer.zero_grad()
        himmelblau_rows(x).sum().backward()  # each row's gradient is its own start's
        optimizer.step()
    finals: list[list[float]] = x.tolist()
    return time.perf_counter() - started, finals


def largest_difference(finals: list[list[float]], want: list[list[float]]) -> float:
    return max(
        abs(a - b) for got, expected in zip(finals, want, strict=True) for a, b in zip(got, expected, strict=True)
    )


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000, help="Adam steps per start (the seed's: 20,000)")
    args = parser.parse_args()
    body = {
        "objective": "himmelblau",
        "starts": STARTS,
        "optimizer": {"name": "adam", "lr": 1e-3},
        "steps": args.steps,
        "record_every": min(2_000, args.steps),
        "dtype": "float32",
    }
    seed_s, seed_finals = seed_loop(args.steps)
    batched_s, batched_finals = eager_batched(args.steps)
    compiled = args.steps >= Settings().compile_min_steps  # shorter runs ask for no compile
    expression = {**body, "objective": {"expression": never_seen_expression(str(time.time_ns())), "variable": "x"}}
    server = uvicorn_server("service.main:app", env={"GRADIENT_COMPILE": "true"}, ready_path="/readyz")
    with server as base, httpx.Client(timeout=600) as client:
        timings, responses = [], []
        for index, request in enumerate((body, body, expression)):
            if index == 1 and compiled:  # warm: once the compile the first request asked for has finished
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
    difference = max(largest_difference([run["x"] for run in response["runs"]], seed_finals) for response in responses)
    print(
        f"seed's case: {len(STARTS)} starts x {args.steps} Adam steps, float32; largest |x - seed x|: "
        f"service {difference:.2e}, eager batched torch {largest_difference(batched_finals, seed_finals):.2e}"
    )
    print(f"{'':38s} {'seconds':>8s}   {'vs seed':>7s}   {'vs batched':>10s}")
    print(f"{'seed loop, start after start:':38s} {seed_s:8.2f}")
    print(f"{'eager batched torch, one [N, 2]:':38s} {batched_s:8.2f}   {seed_s / batched_s:6.1f}x")
    warm = "service, warm request over HTTP:" if compiled else "service, second request (no compile):"
    labels = ("service, first request over HTTP:", warm, "service, never-seen expression:")
    for label, seconds in zip(labels, timings, strict=True):
        print(f"{label:38s} {seconds:8.2f}   {seed_s / seconds:6.1f}x   {batched_s / seconds:9.1f}x")


if __name__ == "__main__":
    main()
