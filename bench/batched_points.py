"""Value, gradient and Hessian of Himmelblau's function at a million points in one request
(`batch`, base64), against single-point requests, the obvious FastAPI handler and torch.func.

Run: .venv/bin/python -m bench.batched_points [--points N] [--repeats R] [--baseline-points M]
Prints the seconds of each variant and the cost per point against ours. The obvious handler
(bench/baseline_app.py: a JSON list of points, torch.autograd one point at a time) is timed on
M points and scaled to N, as it would take minutes; 20 single-point requests to the service
are timed as they are. Both servers run at once, one uvicorn worker each.
"""

from __future__ import annotations

import argparse
import base64
import time

import orjson
import torch

from bench.large_requests import timed_post
from bench.servers import uvicorn_server

HIMMELBLAU = "(x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2"


def himmelblau(x: torch.Tensor) -> torch.Tensor:
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


def encoded(tensor: torch.Tensor) -> dict[str, object]:
    data = base64.b64encode(tensor.numpy().tobytes()).decode()
    return {"shape": list(tensor.shape), "dtype": "float64", "base64": data}


def decoded(value: dict[str, object]) -> torch.Tensor:
    data = bytearray(base64.b64decode(str(value["base64"])))
    shape = [int(size) for size in value["shape"]]  # type: ignore[attr-defined]
    return torch.frombuffer(data, dtype=torch.float64).reshape(shape)


def batch_body(points: torch.Tensor) -> bytes:
    return orjson.dumps(
        {
            "expression": HIMMELBLAU,
            "inputs": {"x": encoded(points)},
            "batch": ["x"],
            "derivatives": ["grad", "hessian"],
            "dtype": "float64",
            "encoding": "base64",
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-points", type=int, default=2_000)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    points = torch.empty(args.points, 2, dtype=torch.float64).uniform_(-5, 5, generator=generator)
    body = batch_body(points)
    ten_thousand = batch_body(points[:10_000])
    singles = [batch_body(points[i : i + 1]) for i in range(20)]
    baseline_body = orjson.dumps({"points": points[: args.baseline_points].tolist()})
    print(f"{args.points} points of a 2-d formula, float64; body {len(body) / 1e6:.1f} MB; median of {args.repeats}")

    with (
        uvicorn_server("bench.baseline_app:app") as baseline,
        uvicorn_server("service.main:app", ready_path="/readyz") as ours,
    ):
        url = "/v1/differentiate"
        timed_post(ours, url, body, 1)  # warm up: first use of the meta kernels and vmap paths
        batch_s, content = timed_post(ours, url, body, args.repeats)
        ten_thousand_s, _ = timed_post(ours, url, ten_thousand, args.repeats)
        started = time.perf_counter()
        for single in singles:
            timed_post(ours, url, single, 1)
        twenty_s = time.perf_counter() - started
        timed_post(baseline, "/himmelblau/derivatives", baseline_body, 1)
        baseline_s, baseline_out = timed_post(baseline, "/himmelblau/derivatives", baseline_body, 1)

    started = time.perf_counter()
    expected_grad = torch.func.vmap(torch.func.grad(himmelblau))(points)
    expected_hessian = torch.func.vmap(torch.func.hessian(himmelblau))(points)
    torch_func_s = time.perf_counter() - started

    result = orjson.loads(content)
    assert torch.equal(decoded(result["value"]), torch.func.vmap(himmelblau)(points)), "values differ"
    torch.testing.assert_close(decoded(result["grad"]["x"]), expected_grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(decoded(result["hessian"]["x"]["x"]), expected_hessian, rtol=1e-12, atol=1e-12)
    baseline_hessian = torch.tensor(orjson.loads(baseline_out)["hessian"], dtype=torch.float64)
    torch.testing.assert_close(baseline_hessian, expected_hessian[: args.baseline_points], rtol=1e-12, atol=1e-12)

    scaled_baseline_s = baseline_s * args.points / args.baseline_points
    per_point_ns = batch_s / args.points * 1e9
    print(f"{'gradient-service, one batched request':52s} {batch_s:9.3f} s  {per_point_ns:9.0f} ns/point")
    print(f"{'torch.func vmap(grad), vmap(hessian) in process':52s} {torch_func_s:9.3f} s   (no HTTP)")
    label = f"baseline: obvious handler, {args.baseline_points} points scaled"
    print(f"{label:52s} {scaled_baseline_s:9.1f} s   {scaled_baseline_s / batch_s:8.0f}x ours")
    print(f"{'gradient-service, 10,000 points in one request':52s} {ten_thousand_s:9.3f} s")
    ratio = twenty_s / ten_thousand_s
    print(f"{'gradient-service, 20 single-point requests':52s} {twenty_s:9.3f} s   {ratio:8.1f}x the 10,000")


if __name__ == "__main__":
    main()
