"""The seed's test case, 4 starts x 20,000 Adam steps (lr 1e-3) on Himmelblau's function:
POST /v1/optimize over HTTP against two baselines run side by side in the same process:

- the seed's own loop, run for those starts one after another;
- eager batched torch, the obvious stronger loop: one [4, 2] parameter holding every start,
  torch.optim.Adam with its default settings (lr 1e-3; on a CPU torch picks its single-tensor
  implementation, neither foreach nor fused), backward each step.

Run: .venv/bin/python -m bench.optimize_seed [--steps N] [--step-machine false]
Prints seconds for both baselines, the service's first request to a fresh server, the same
request again, and the same objective written as an expression the server has never seen, each
with its ratio against both baselines, and the background compiles asked for meanwhile (the
step machine takes these runs: none; with --step-machine false, the first request asks for one,
which the next ones may or may not find ready).

Then the cases people meet first, each against the same runs as plain torch.optim loops in this
process (zero_grad, backward, step; one loop per run): a small run (sphere, 3-d, 200 Adam steps)
and a playground run (Himmelblau, 3 starts x (adam, sgd) x 1,500 steps, recorded every 25), each
the median of several requests to the warm server.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

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


SMALL = {"objective": "sphere", "x0": [1.0, -2.0, 3.0], "optimizer": {"name": "adam", "lr": 0.01}, "steps": 200}
PLAYGROUND_STARTS = [[0.0, 0.0], [-1.0, 3.0], [2.0, -3.0]]
PLAYGROUND = {
    "objective": "himmelblau",
    "starts": PLAYGROUND_STARTS,
    "optimizer": [{"name": "adam", "lr": 0.05}, {"name": "sgd", "lr": 0.005}],
    "steps": 1_500,
    "record_every": 25,
}


def sphere(x: torch.Tensor) -> torch.Tensor:
    return (x**2).sum()


def plain_loops(
    fn: Any, starts: list[list[float]], optimizers: list[tuple[Any, float]], steps: int, every: int
) -> float:
    """One torch.optim loop per start and optimizer, recording x and the value every ``every`` steps."""
    started = time.perf_counter()
    for start in starts:
        for cls, lr in optimizers:
            x = torch.tensor(start, requires_grad=True)
            optimizer = cls([x], lr=lr)
            trajectory = []
            for step in range(steps + 1):
                optimizer.zero_grad()
                value = fn(x)
                value.backward()
                if step % every == 0 or step == steps:
                    trajectory.append((x.tolist(), value.item()))
                if step < steps:
                    optimizer.step()
    return time.perf_counter() - started


def median_request(client: httpx.Client, url: str, body: dict[str, Any], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        client.post(url, json=body).raise_for_status()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


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
    parser.add_argument(
        "--step-machine", default="true", help="GRADIENT_STEP_MACHINE of the server (false: torch calls)"
    )
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
    expression = {**body, "objective": {"expression": never_seen_expression(str(time.time_ns())), "variable": "x"}}
    env = {"GRADIENT_COMPILE": "true", "GRADIENT_STEP_MACHINE": args.step_machine}
    server = uvicorn_server("service.main:app", env=env, ready_path="/readyz")
    with server as base, httpx.Client(timeout=600) as client:
        timings, responses = [], []
        for request in (body, body, expression):
            started = time.perf_counter()
            response = client.post(f"{base}/v1/optimize", json=request)
            timings.append(time.perf_counter() - started)
            response.raise_for_status()
            responses.append(response.json())
        seen = compiles(client, base)
        print(f"background compiles asked for meanwhile: {seen}", flush=True)
        url = f"{base}/v1/optimize"
        client.post(url, json=SMALL).raise_for_status()  # the first of each case traces its objective
        client.post(url, json=PLAYGROUND).raise_for_status()
        small_s = median_request(client, url, SMALL, 21)
        playground_s = median_request(client, url, PLAYGROUND, 7)
    small_loop_s = plain_loops(sphere, [SMALL["x0"]], [(torch.optim.Adam, 0.01)], 200, 2_000)  # type: ignore[list-item]
    playground_loop_s = plain_loops(
        himmelblau, PLAYGROUND_STARTS, [(torch.optim.Adam, 0.05), (torch.optim.SGD, 0.005)], 1_500, 25
    )
    difference = max(largest_difference([run["x"] for run in response["runs"]], seed_finals) for response in responses)
    print(
        f"seed's case: {len(STARTS)} starts x {args.steps} Adam steps, float32; largest |x - seed x|: "
        f"service {difference:.2e}, eager batched torch {largest_difference(batched_finals, seed_finals):.2e}"
    )
    print(f"{'':38s} {'seconds':>8s}   {'vs seed':>7s}   {'vs batched':>10s}")
    print(f"{'seed loop, start after start:':38s} {seed_s:8.2f}")
    print(f"{'eager batched torch, one [N, 2]:':38s} {batched_s:8.2f}   {seed_s / batched_s:6.1f}x")
    labels = (
        "service, first request, fresh server:",
        "service, the same again (warm):",
        "service, never-seen expression:",
    )
    for label, seconds in zip(labels, timings, strict=True):
        print(f"{label:38s} {seconds:8.2f}   {seed_s / seconds:6.1f}x   {batched_s / seconds:9.1f}x")
    print(f"\n{'':58s} {'plain loop':>10s}   {'service':>8s}   {'ratio':>6s}")
    for label, loop_s, service_s in (
        ("small run: sphere, 3-d, 200 Adam steps (median of 21):", small_loop_s, small_s),
        ("playground run: himmelblau, 3 starts x (adam, sgd) x 1,500 (median of 7):", playground_loop_s, playground_s),
    ):
        print(f"{label:58s} {loop_s * 1e3:8.1f} ms {service_s * 1e3:8.1f} ms {loop_s / service_s:6.1f}x")


if __name__ == "__main__":
    main()
