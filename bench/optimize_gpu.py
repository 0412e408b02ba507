"""Many starts at once on a GPU: 1,000,000 starts x 2,000 Adam steps (lr 1e-3) on Himmelblau's
function, float32. Side by side in one run:

- eager batched torch, the obvious loop: one [N, 2] parameter, torch.optim.Adam, backward;
- the same with torch.optim.Adam(fused=True), torch's fastest stock Adam (the kernel the
  service's engine steps with);
- the service's engine (traced gradient, fused Adam), called in-process;
- the service over HTTP: base64 starts in, a summary report out.

Run: python -m bench.optimize_gpu [--starts N] [--steps N] [--device cuda]
Each is timed twice (the first includes warm-up) and the faster is reported, with the engine's
and the service's ratios against both baselines; the largest differences between the engine's
final points and each baseline's are printed too. Without CUDA it says so and exits 0 (a
quick check of the code paths on a CPU: --device cpu --starts 1000 --steps 200).
"""

from __future__ import annotations

import argparse
import base64
import time
from collections.abc import Callable

import httpx
import torch

from bench.servers import uvicorn_server
from service.compute.optimisation import Objective, Schedule, optimize
from service.compute.optimisation.objectives import OBJECTIVES
from service.compute.optimisation.optimizers import OPTIMIZERS

HIMMELBLAU = OBJECTIVES.get("himmelblau").fn
ADAM = OPTIMIZERS.get("adam")


def synchronised(device: torch.device, work: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, result


def eager_batched(starts: torch.Tensor, steps: int, fused: bool | None = None) -> torch.Tensor:
    x = starts.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=1e-3, fused=fused)
    for _ in range(steps):
        optimizer.zero_grad()
        HIMMELBLAU(x).sum().backward()
        optimizer.step()
    return x.detach()


def engine(starts: torch.Tensor, steps: int) -> torch.Tensor:
    schedule = Schedule(steps, steps, trajectories=False)
    outcome = optimize(Objective(HIMMELBLAU, True), starts, [(ADAM, {**ADAM.defaults(), "lr": 1e-3})], schedule)
    return outcome.groups[0].x


def over_http(base: str, starts: torch.Tensor, steps: int, device: str) -> float:
    body = {
        "objective": "himmelblau",
        "starts": {
            "dtype": "float32",
            "shape": list(starts.shape),
            "base64": base64.b64encode(starts.cpu().numpy().tobytes()).decode(),
        },
        "optimizer": {"name": "adam", "lr": 1e-3},
        "steps": steps,
        "record_every": steps,
        "report": "summary",
        "encoding": "base64",
        "dtype": "float32",
        "device": device,
    }
    started = time.perf_counter()
    response = httpx.post(f"{base}/v1/optimize", json=body, timeout=600)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def fastest(device: torch.device, work: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    """The faster of two timed runs of ``work`` (the first includes warm-up), with its result."""
    return min((synchronised(device, work) for _ in range(2)), key=lambda pair: pair[0])


def apart(x: torch.Tensor, baseline: torch.Tensor) -> str:
    distance = (x - baseline).abs().amax(dim=-1)
    return f"largest {float(distance.max()):.2e}, runs over 1e-3 apart: {int((distance > 1e-3).sum())}"


def row(label: str, seconds: float, *baselines: float) -> str:
    """``label``, seconds, and how many times faster than each baseline's seconds."""
    return f"{label:32s} {seconds:8.3f}" + "".join(f"   {baseline / seconds:7.1f}x" for baseline in baselines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=2_000)
    parser.add_argument("--device", default="cuda", help="cuda (the default), cuda:N, or cpu for a quick check")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"skipped: no CUDA device here for --device {args.device} (--device cpu checks the code paths)")
        return
    generator = torch.Generator().manual_seed(0)
    starts = (torch.rand(args.starts, 2, generator=generator) * 10 - 5).to(device)
    print(f"{args.starts} starts x {args.steps} Adam steps on himmelblau, float32, {device}", flush=True)
    eager_s, eager_x = fastest(device, lambda: eager_batched(starts, args.steps))
    fused_s, fused_x = fastest(device, lambda: eager_batched(starts, args.steps, fused=True))
    engine_s, engine_x = fastest(device, lambda: engine(starts, args.steps))
    print(f"{'':32s} {'seconds':>8s}   {'vs eager':>8s}   {'vs fused':>8s}", flush=True)
    print(row("eager batched torch:", eager_s), flush=True)
    print(row("torch.optim.Adam(fused=True):", fused_s, eager_s), flush=True)
    print(row("service engine, in-process:", engine_s, eager_s, fused_s), flush=True)
    print(f"|engine x - eager torch's x|: {apart(engine_x, eager_x)}", flush=True)
    print(f"|engine x - fused torch's x|: {apart(engine_x, fused_x)}", flush=True)
    limits = {"GRADIENT_MAX_STEPS": str(args.starts * args.steps), "GRADIENT_MAX_ELEMENTS": str(args.starts * 8)}
    limits |= {"GRADIENT_MAX_BODY_BYTES": str(args.starts * 16 + 1_000_000), "GRADIENT_REQUEST_TIMEOUT_S": "600"}
    with uvicorn_server("service.main:app", env=limits, ready_path="/readyz") as base:
        http_s = min(over_http(base, starts, args.steps, args.device) for _ in range(2))
    print(row("service over HTTP:", http_s, eager_s, fused_s), flush=True)


if __name__ == "__main__":
    main()
