"""The same results on a GPU; skipped cleanly where CUDA is absent."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from service.api.asgi import Metrics
from service.api.workers import WorkerPool
from service.compute.expressions.differentiate import differentiate, dry_run
from service.compute.expressions.language import Limits, compile_program
from service.compute.ops.activations import ActivationSample, ActivationSpec
from service.compute.ops.losses import LossSample, LossSpec
from service.compute.optimisation import Objective, Schedule, optimize
from service.compute.optimisation.objectives import OBJECTIVES
from service.compute.optimisation.optimizers import OPTIMIZERS, OptimizerSpec
from service.config import Settings
from tests.api.test_losses_api import wire_body
from tests.compute.test_activations import CASES, sample_input
from tests.compute.test_budgets import signature
from tests.compute.test_derivatives import HIMMELBLAU
from tests.compute.test_losses import CASES as LOSS_CASES
from tests.compute.test_optimize import STARTS, independent_loop
from tests.conftest import AppClient
from tests.helpers import from_wire

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.mark.parametrize(("spec", "sample"), CASES)
def test_activation_on_cuda_matches_cpu(client: AppClient, spec: ActivationSpec, sample: ActivationSample) -> None:
    x = sample_input(sample)
    body = {
        "input": x.tolist(),
        "params": dict(sample.params),
        "dtype": "float64",
        "second_order": spec.elementwise,
    }
    on_gpu = client.post(f"/v1/activations/{spec.name}", json={**body, "device": "cuda"}).json()
    on_cpu = client.post(f"/v1/activations/{spec.name}", json={**body, "device": "cpu"}).json()
    assert on_gpu["meta"]["device"].startswith("cuda")
    for key in ("output", "grad", "grad2"):
        if on_cpu[key] is not None:
            torch.testing.assert_close(from_wire(on_gpu[key]), from_wire(on_cpu[key]))


@pytest.mark.parametrize(("spec", "sample"), LOSS_CASES)
def test_loss_on_cuda_matches_cpu(client: AppClient, spec: LossSpec, sample: LossSample) -> None:
    body, _ = wire_body(spec, sample, torch.float64)
    on_gpu = client.post(f"/v1/losses/{spec.name}", json={**body, "dtype": "float64", "device": "cuda"}).json()
    on_cpu = client.post(f"/v1/losses/{spec.name}", json={**body, "dtype": "float64", "device": "cpu"}).json()
    assert on_gpu["meta"]["device"].startswith("cuda")
    torch.testing.assert_close(from_wire(on_gpu["loss"]), from_wire(on_cpu["loss"]))
    for name, grad in on_cpu["grad"].items():
        if grad is None:
            assert on_gpu["grad"][name] is None
        else:
            torch.testing.assert_close(from_wire(on_gpu["grad"][name]), from_wire(grad))


def test_bad_class_index_on_cuda_is_a_400_and_the_device_survives(client: AppClient) -> None:
    bad = client.post("/v1/losses/cross_entropy", json={"input": [[1, 2]], "target": [5], "device": "cuda"})
    assert bad.status_code == 400
    bce = client.post(
        "/v1/losses/binary_cross_entropy", json={"input": [0.5, "NaN"], "target": [1, 0], "device": "cuda"}
    )
    assert bce.status_code == 400
    ok = client.post("/v1/losses/cross_entropy", json={"input": [[1, 2]], "target": [1], "device": "cuda"})
    assert ok.status_code == 200


def test_optimisation_on_cuda_matches_cpu(client: AppClient) -> None:
    body = {
        "objective": "himmelblau",
        "starts": [[1.0, 0.0], [-4.0, 0.0]],
        "optimizer": ["adam", "lbfgs"],
        "steps": 50,
        "record_every": 10,
        "tolerance": 1e-6,
        "dtype": "float64",
    }
    on_gpu = client.post("/v1/optimize", json={**body, "device": "cuda"}).json()
    on_cpu = client.post("/v1/optimize", json={**body, "device": "cpu"}).json()
    assert on_gpu["meta"]["device"].startswith("cuda")
    for gpu_run, cpu_run in zip(on_gpu["runs"], on_cpu["runs"], strict=True):
        torch.testing.assert_close(from_wire(gpu_run["x"]), from_wire(cpu_run["x"]))
        assert gpu_run["stopped"] == cpu_run["stopped"]


@pytest.mark.parametrize("spec", [spec for spec in OPTIMIZERS if spec.elementwise], ids=lambda spec: spec.name)
def test_batched_runs_on_cuda_equal_independent_loops(spec: OptimizerSpec) -> None:
    himmelblau = OBJECTIVES.get("himmelblau")
    request = {"lr": 1e-3}
    settings = {**spec.defaults(), **request}
    starts = STARTS.cuda()
    runs = optimize(Objective(himmelblau.fn, True), starts, [(spec, settings)], Schedule(300, 100)).runs()
    for run, start in zip(runs, starts, strict=True):
        assert run.x.device.type == "cuda"
        expected = independent_loop(spec.name, request, himmelblau.fn, start, 300)
        torch.testing.assert_close(run.x, expected, rtol=0, atol=1e-7)


def test_many_starts_on_cuda_match_cpu(client: AppClient) -> None:
    starts = torch.rand(20_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 10 - 5
    body = {
        "objective": "himmelblau",
        "starts": starts.tolist(),
        "optimizer": "adam",
        "steps": 500,
        "record_every": 500,
        "tolerance": 1e-3,
        "report": "summary",
        "dtype": "float64",
    }
    on_gpu = client.post("/v1/optimize", json={**body, "device": "cuda"}).json()["summary"]
    on_cpu = client.post("/v1/optimize", json={**body, "device": "cpu"}).json()["summary"]
    torch.testing.assert_close(from_wire(on_gpu["x"]), from_wire(on_cpu["x"]), rtol=0, atol=1e-7)
    assert torch.equal(from_wire(on_gpu["steps"]), from_wire(on_cpu["steps"]))
    assert on_gpu["stopped"] == on_cpu["stopped"]
    assert on_gpu["minima"] == on_cpu["minima"]


def test_gpu_out_of_memory_is_a_503_and_the_next_request_succeeds(client: AppClient) -> None:
    body = {"input": [[0.5] * 2048] * 2048, "device": "cuda", "jacobian": False}
    hog: list[torch.Tensor] = []
    try:  # take nearly all the device's free memory, in blocks, so the request cannot fit
        while True:
            free, _ = torch.cuda.mem_get_info()
            if free < 64 * 2**20:
                break
            hog.append(torch.empty(max(free // 2, 32 * 2**20), dtype=torch.uint8, device="cuda"))
    except torch.OutOfMemoryError:
        pass
    refused = client.post("/v1/activations/sigmoid", json=body)
    hog.clear()
    torch.cuda.empty_cache()
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["type"] == "device_out_of_memory"
    assert refused.headers["retry-after"]
    answered = client.post("/v1/activations/sigmoid", json=body)
    assert answered.status_code == 200
    metrics = client.get("/metrics").text
    assert "gradient_gpu_memory_allocated_bytes" in metrics


def test_batched_derivatives_on_cuda_match_cpu(client: AppClient) -> None:
    points = torch.rand(10_000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 10 - 5
    body = {
        "expression": HIMMELBLAU,
        "inputs": {"x": points.tolist()},
        "batch": ["x"],
        "derivatives": ["grad", "hessian", "jvp", "hvp"],
        "tangents": {"x": torch.ones_like(points).tolist()},
        "dtype": "float64",
    }
    on_cpu = client.post("/v1/differentiate", json={**body, "device": "cpu"}).json()
    on_cuda = client.post("/v1/differentiate", json={**body, "device": "cuda"}).json()
    assert on_cuda["meta"]["device"] == "cuda:0"
    for field in ("value", "jvp"):
        torch.testing.assert_close(from_wire(on_cuda[field]), from_wire(on_cpu[field]), rtol=1e-12, atol=1e-12)
    for field in ("grad", "hvp"):
        expected = from_wire(on_cpu[field]["x"])
        torch.testing.assert_close(from_wire(on_cuda[field]["x"]), expected, rtol=1e-12, atol=1e-12)
    hessians = (from_wire(r["hessian"]["x"]["x"]) for r in (on_cuda, on_cpu))
    torch.testing.assert_close(*hessians, rtol=1e-12, atol=1e-12)


def test_the_estimated_peak_memory_covers_what_cuda_allocates() -> None:
    """The dry run's bytes against the allocator's own peak, for a batch with its Hessian and a
    chain of matrix products with its gradient: never below, and within a small factor."""
    cuda = torch.device("cuda")
    cases = [
        (HIMMELBLAU, {"x": (1_000_000, 2)}, ("grad", "hessian"), ("x",)),
        ("sum(tanh(W @ W) @ W)", {"W": (2_000, 2_000)}, ("grad",), None),
    ]
    for source, sizes, wanted, batch in cases:
        inputs = {name: torch.rand(size, dtype=torch.float64, device=cuda) for name, size in sizes.items()}
        program = compile_program(source, frozenset(inputs), torch.float64, cuda, Limits(), 10**8)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        result = differentiate(program, inputs, None, wanted, batch=batch, max_entries=10**9)  # type: ignore[arg-type]
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated() - baseline + sum(t.numel() * 8 for t in inputs.values())
        del result
        _, cost = dry_run(signature(source, inputs, wanted, batch))  # type: ignore[arg-type]
        assert measured * 0.9 <= cost.bytes <= 4 * measured, (source, measured, cost.bytes)


def test_one_compute_worker_per_gpu() -> None:
    """By default a server has one worker process per GPU, each on its own device."""
    settings = Settings(device="auto")
    count = torch.cuda.device_count()
    assert settings.effective_compute_processes() == count
    pool = WorkerPool(settings, Metrics(), count)
    devices = [pool.worker_settings(index).device for index in range(count)]
    assert devices == ([f"cuda:{index}" for index in range(count)] if count > 1 else ["auto"])


def test_a_device_side_assert_is_seen_by_the_workers_health_check() -> None:
    """After a device-side assert every CUDA call fails: cuda_broken() says so, and a worker then
    exits to be replaced (its context cannot recover); in a fresh process it says no."""
    program = (
        "import torch\n"
        "from service.compute.runtime import cuda_broken\n"
        "x = torch.zeros(4, device='cuda')\n"
        "print('before', cuda_broken())\n"
        "try:\n"
        "    x[torch.tensor([40], device='cuda')] = 1.0\n"
        "    torch.cuda.synchronize()\n"
        "except RuntimeError:\n"
        "    pass\n"
        "print('after', cuda_broken())\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False)
    assert "before False" in done.stdout, done.stderr
    assert "after True" in done.stdout, done.stderr
