"""Optimisation of tensor-shaped variables: the seed's multi-output perceptron, whose weights
``w`` are [2, 10], fitted from several starts, each run against plain torch.optim on a [2, 10]
parameter (the seed's loop: zero_grad, backward, step; a closure for lbfgs), in float64.

The engine holds each start flattened, one row of 20, and hands the objective its [2, 10] view.
Which comparison holds, by path (the objective's value and gradient; the optimizer's step):

* plain autograd, start by start (lbfgs always; an objective tracing cannot follow): the same
  torch calls on the same numbers as the loop, so the runs are bitwise the loop's;
* the traced graph (a [2, 10] -> scalar function vmapped over the starts, a formula of the
  expression language, or a function batched over [N, 2, 10]) and the fused Adam kernel over
  all the starts: the batched matmul and the kernel's vectorised body round in their own order,
  so the runs are within 1e-10 of the loop's (measured: at most 9e-16 after 25 steps).

Long Adam runs compiled into one kernel (see ``compiled``) take the [2, 10] variable too.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from service.compute.expressions.language import Limits
from service.compute.optimisation import Objective, RunGroup, Schedule, optimize, tasks
from service.compute.optimisation.compiled import CHUNK, ChunkCompiler
from service.compute.optimisation.objectives import OBJECTIVES
from service.compute.optimisation.optimizers import OPTIMIZERS
from service.errors import InvalidInput, LimitExceeded
from tests.compute.test_compiled import kernel_used
from tests.compute.test_optimizer_oracles import (
    FUSED,
    TORCH_CLASSES,
    Expected,
    assert_runs_match,
    service_settings,
    torch_kwargs,
)

F64 = torch.float64
CPU = torch.device("cpu")
_generator = torch.Generator().manual_seed(16)
X = torch.randn(1, 10, generator=_generator, dtype=F64)
"""The seed's input, [1, 10]."""
TARGET = torch.ones(1, 2, dtype=F64)
"""The seed's target, [1, 2]."""
STARTS = torch.randn(3, 2, 10, generator=_generator, dtype=F64)
"""Three starts of the weights w [2, 10]."""
SHAPE = (2, 10)


def perceptron(w: torch.Tensor) -> torch.Tensor:
    """The seed's multi-output perceptron: o = sigmoid(x @ w.t()), mse against ones."""
    o = torch.sigmoid(X @ w.t())  # [1, 2]
    return F.mse_loss(torch.ones(1, 2, dtype=F64), o)


def batched_perceptron(w: torch.Tensor) -> torch.Tensor:
    """The same loss for weights [..., 2, 10], one value per leading index."""
    o = torch.sigmoid(X @ w.transpose(-1, -2))  # [..., 1, 2]
    return ((o - TARGET) ** 2).mean(dim=(-2, -1))


def untraceable(w: torch.Tensor) -> torch.Tensor:
    """The perceptron after reading a number into Python: tracing cannot follow it."""
    float(w.detach().sum())
    return perceptron(w)


def formula() -> Objective:
    """The perceptron written in the expression language, as POST /v1/optimize compiles it."""
    source = "o = sigmoid(x @ w.T)\nmse(o, y)"
    chosen = tasks.Formula(source, "w", {"x": X, "y": TARGET}, lambda value, where: value)
    return tasks.resolve_objective(chosen, SHAPE, F64, CPU, Limits(), 10_000_000).objective


PATHS: dict[str, Callable[[], Objective]] = {
    "vmapped": lambda: Objective(perceptron, batched=False),
    "formula": formula,
    "batched": lambda: Objective(batched_perceptron, batched=True),
    "autograd": lambda: Objective(untraceable, batched=False),
}
REFERENCE_FN = {"vmapped": perceptron, "formula": perceptron, "batched": batched_perceptron, "autograd": perceptron}

REQUESTS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.5, "momentum": 0.9, "nesterov": True},
    "adam": {"lr": 0.05, "weight_decay": 0.01},
    "adamw": {"lr": 0.05, "amsgrad": True},
    "rmsprop": {"lr": 0.01, "momentum": 0.5, "centered": True},
    "adagrad": {"lr": 0.1},
    "adadelta": {"lr": 1.0},
    "adamax": {"lr": 0.02},
    "nadam": {"lr": 0.02},
    "radam": {"lr": 0.05},
    "lbfgs": {"max_iter": 5},
}
"""Every optimizer, with settings of its own."""


def seed_loop(
    name: str,
    request: Mapping[str, Any],
    fn: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    steps: int,
    record_every: int,
    **extra: Any,
) -> Expected:
    """torch's loop on one parameter of the start's shape: zero_grad, backward, step (a closure
    for lbfgs), recording the point and value every ``record_every`` steps and at the end."""
    w = start.clone().requires_grad_(True)
    optimizer = TORCH_CLASSES[name]([w], **torch_kwargs(name, request), **extra)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = fn(w)
        loss.backward()
        return loss

    trajectory: list[tuple[int, torch.Tensor, float]] = []
    step = 0
    while True:
        loss = closure()  # the value and gradient at this step's point (lbfgs evaluates again)
        if step % record_every == 0 or step == steps:
            trajectory.append((step, w.detach().clone(), loss.item()))
        if step == steps:
            break
        if name == "lbfgs":
            optimizer.step(closure)  # type: ignore[arg-type]  # LBFGS's closure returns the loss
        else:
            optimizer.step()
        step += 1
    assert w.grad is not None
    grad_norm = float(torch.linalg.vector_norm(w.grad))
    return Expected(w.detach().clone(), loss.item(), grad_norm, steps, "max_steps", trajectory)


def exact(name: str, path: str) -> bool:
    """Whether the service runs plain autograd start by start here (see the module's doc)."""
    return name == "lbfgs" or path == "autograd"


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list(TORCH_CLASSES))
def test_runs_of_a_matrix_variable_equal_torchs_loops_on_a_matrix_parameter(name: str, path: str) -> None:
    steps, record_every = 25, 10
    request = REQUESTS[name]
    spec = OPTIMIZERS.get(name)
    outcome = optimize(PATHS[path](), STARTS, [(spec, service_settings(name, request))], Schedule(steps, record_every))
    runs = outcome.runs()
    assert [run.start for run in runs] == [0, 1, 2]
    extra = {"fused": True} if name in FUSED and path != "autograd" else {}
    expected = [seed_loop(name, request, REFERENCE_FN[path], start, steps, record_every, **extra) for start in STARTS]
    for run, start in zip(runs, STARTS, strict=True):
        assert run.x0.shape == run.x.shape == SHAPE
        assert torch.equal(run.x0, start)
        assert [point.shape for point in run.trajectory.x] == [SHAPE] * 4
    assert [run.trajectory.step for run in runs] == [[0, 10, 20, 25]] * 3
    tolerance = 0.0 if exact(name, path) else 1e-10
    assert_runs_match(runs, expected, rtol=0.0, atol=tolerance)
    assert all(not torch.equal(run.x, run.x0) for run in runs)  # the runs moved


def test_the_fit_from_several_starts_reaches_the_target() -> None:
    """Adam, lr 0.1, from three starts: each run drives sigmoid(x @ w.t()) to the ones it is
    fitted to, and its end is its own loop's."""
    adam = OPTIMIZERS.get("adam")
    settings = service_settings("adam", {"lr": 0.1})
    runs = optimize(Objective(perceptron, False), STARTS, [(adam, settings)], Schedule(500, 100)).runs()
    for run, start in zip(runs, STARTS, strict=True):
        assert run.value < 1e-4 < perceptron(start).item()
        expected = seed_loop("adam", {"lr": 0.1}, perceptron, start, 500, 100, fused=True)
        torch.testing.assert_close(run.x, expected.x, rtol=0, atol=1e-10)
        assert run.trajectory.step == [0, 100, 200, 300, 400, 500]


@pytest.mark.parametrize("shape", [(4,), (2, 3), (2, 3, 4)], ids=str)
def test_any_shape_with_a_formula(shape: tuple[int, ...]) -> None:
    """A formula sees the variable in its shape: sum((x - c) ** 2) with c of that shape, and
    lbfgs reaches c from each start, in the variable's shape."""
    target = torch.arange(float(torch.Size(shape).numel()), dtype=F64).reshape(shape)
    chosen = tasks.Formula("sum((x - c) ** 2)", "x", {"c": target}, lambda value, where: value)
    objective = tasks.resolve_objective(chosen, shape, F64, CPU, Limits(), 10_000_000).objective
    starts = torch.zeros(2, *shape, dtype=F64)
    starts[1] = 1.0
    lbfgs, sgd = OPTIMIZERS.get("lbfgs"), OPTIMIZERS.get("sgd")
    optimizers = [(lbfgs, lbfgs.defaults()), (sgd, service_settings("sgd", {"lr": 0.1}))]
    runs = optimize(objective, starts, optimizers, Schedule(3, 1)).runs()
    assert [(run.start, run.optimizer) for run in runs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for run in runs:
        assert run.x.shape == run.x0.shape == shape
        assert all(point.shape == shape for point in run.trajectory.x)
        if run.optimizer == 0:
            torch.testing.assert_close(run.x, target, rtol=0, atol=1e-12)
        else:  # three steps of gradient descent with lr 0.1 on a quadratic: x -> c + 0.8 (x - c)
            torch.testing.assert_close(run.x, target + 0.8**3 * (starts[run.start] - target), rtol=0, atol=1e-12)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")
def test_a_compiled_adam_run_of_a_matrix_variable_equals_torchs_loops() -> None:
    """The kernel compiled for the perceptron's [2, 10] weights (held as rows of 20) steps them
    as the fused loop on a [2, 10] parameter does, up to its own rounding order."""
    adam = OPTIMIZERS.get("adam")
    settings = service_settings("adam", {"lr": 0.05})
    objective = Objective(perceptron, False)
    compiler = ChunkCompiler(min_steps=1)
    optimize(objective, STARTS, [(adam, settings)], Schedule(CHUNK * 8, 10_000), compiler)
    compiler.wait()
    assert compiler.compiled() == 1
    with kernel_used(compiler):
        runs = optimize(objective, STARTS, [(adam, settings)], Schedule(CHUNK * 20, CHUNK * 10), compiler).runs()
    for run, start in zip(runs, STARTS, strict=True):
        expected = seed_loop("adam", {"lr": 0.05}, perceptron, start, CHUNK * 20, CHUNK * 10, fused=True)
        assert run.trajectory.step == [0, CHUNK * 10, CHUNK * 20]
        assert run.x.shape == SHAPE
        torch.testing.assert_close(run.x, expected.x, rtol=0, atol=1e-10)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_of_a_matrix_variable_on_cuda_equal_torchs_loops() -> None:
    """On a GPU the traced Adam steps of the [2, 10] weights are replayed as CUDA graphs (from
    the second stretch of steps between two recorded ones); each run ends near its CPU loop's
    point (the GPU's matmul rounds in its own order)."""
    x, target = X.cuda(), TARGET.cuda()

    def on_gpu(w: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(target, torch.sigmoid(x @ w.t()))

    adam = OPTIMIZERS.get("adam")
    settings = service_settings("adam", {"lr": 0.05})
    runs = optimize(Objective(on_gpu, False), STARTS.cuda(), [(adam, settings)], Schedule(600, 300)).runs()
    for run, start in zip(runs, STARTS, strict=True):
        assert run.x.device.type == "cuda"
        assert run.x.shape == SHAPE
        expected = seed_loop("adam", {"lr": 0.05}, perceptron, start, 600, 300, fused=True)
        torch.testing.assert_close(run.x.cpu(), expected.x, rtol=0, atol=1e-7)


def test_progress_reports_points_in_the_variables_shape() -> None:
    seen: list[tuple[int, torch.Size]] = []

    def on_progress(step: int, group: RunGroup) -> None:
        seen.append((step, group.points.shape))
        assert torch.equal(group.points.reshape(len(group.x), -1), group.x)

    adam = OPTIMIZERS.get("adam")
    schedule = Schedule(4, 2, on_progress=on_progress)
    optimize(Objective(perceptron, False), STARTS, [(adam, adam.defaults())], schedule)
    assert seen == [(0, torch.Size([3, 2, 10])), (2, torch.Size([3, 2, 10])), (4, torch.Size([3, 2, 10]))]


def test_a_tolerance_is_on_the_norm_over_every_element() -> None:
    lbfgs = OPTIMIZERS.get("lbfgs")
    runs = optimize(
        Objective(perceptron, False), STARTS[:1], [(lbfgs, lbfgs.defaults())], Schedule(50, 10, tolerance=1e-6)
    ).runs()
    (run,) = runs
    assert run.stopped == "tolerance"
    w = run.x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(perceptron(w), w)
    assert run.grad_norm == float(torch.linalg.vector_norm(grad)) <= 1e-6


# Named objectives of a tensor variable.


def test_an_objective_of_any_dimension_takes_a_tensor_as_its_flattened_vector() -> None:
    rosenbrock = OBJECTIVES.get("rosenbrock")
    objective = tasks.resolve_objective("rosenbrock", (2, 3), F64, CPU, Limits(), 1_000).objective
    starts = torch.tensor([[[0.5, -0.5, 1.5], [1.2, 0.8, -1.0]]], dtype=F64)
    sgd = OPTIMIZERS.get("sgd")
    settings = service_settings("sgd", {"lr": 1e-4})
    (run,) = optimize(objective, starts, [(sgd, settings)], Schedule(20, 10)).runs()
    (flat,) = optimize(Objective(rosenbrock.fn, True), starts.reshape(1, 6), [(sgd, settings)], Schedule(20, 10)).runs()
    assert run.x.shape == (2, 3)
    assert torch.equal(run.x.reshape(6), flat.x)
    assert run.value == flat.value
    nearest = tasks.nearest_minimum(rosenbrock, run.x)
    assert nearest is not None
    assert nearest.x == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    assert nearest.distance == tasks.nearest_minimum(rosenbrock, flat.x).distance  # type: ignore[union-attr]


def test_a_summary_keeps_the_variables_shape() -> None:
    sphere = OBJECTIVES.get("sphere")
    objective = tasks.resolve_objective("sphere", (2, 2), F64, CPU, Limits(), 1_000).objective
    starts = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[3.0, -2.0], [1.0, 1.0]]], dtype=F64)
    lbfgs, adam = OPTIMIZERS.get("lbfgs"), OPTIMIZERS.get("adam")
    optimizers = [(lbfgs, lbfgs.defaults()), (adam, adam.defaults())]
    outcome = optimize(objective, starts, optimizers, Schedule(5, 5, trajectories=False))
    summary = tasks.summarize(outcome, optimizers, sphere, reach=1e-3)
    assert summary.x.shape == (4, 2, 2)
    runs = outcome.runs()
    assert torch.equal(summary.x, torch.stack([run.x for run in runs]))
    assert summary.minima is not None
    (basin,) = summary.minima
    assert basin.x == [[0.0, 0.0], [0.0, 0.0]]
    assert basin.count == 2  # lbfgs reaches 0 from both starts; 5 Adam steps do not
    assert tasks.shaped([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (3,)) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert tasks.shaped([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (1, 3, 2)) == [[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]]


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        ("himmelblau", (3,), "himmelblau is 2-dimensional, but the starts are 3-dimensional."),
        ("himmelblau", (1, 2), "himmelblau is 2-dimensional: its starts must be points of shape [2], not [1, 2]."),
        ("beale", (2, 1), "beale is 2-dimensional: its starts must be points of shape [2], not [2, 1]."),
        ("mccormick", (2, 10), "mccormick is 2-dimensional: its starts must be points of shape [2], not [2, 10]."),
    ],
)
def test_a_fixed_dimension_objective_refuses_other_shapes(name: str, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        tasks.resolve_objective(name, shape, F64, CPU, Limits(), 1_000)
    assert raised.value.error_type == "shape_mismatch"
    assert str(raised.value) == message


def identity(value: Any, where: str) -> torch.Tensor:
    return torch.as_tensor(value, dtype=F64)


def test_starts_of_a_tensor_variable() -> None:
    w0 = STARTS[0].tolist()
    assert tasks.starts_of(w0, None, identity).shape == (1, 2, 10)
    assert tasks.starts_of(None, STARTS.tolist(), identity).shape == (3, 2, 10)
    assert tasks.starts_of([1.0, 2.0], None, identity).shape == (1, 2)  # a vector, as ever
    assert tasks.starts_of(None, [[1.0, 2.0]], identity).shape == (1, 2)
    refused: list[tuple[Any, Any]] = [(1.5, None), ([], None), ([[]], None)]
    refused += [(None, [1.0, 2.0]), (None, [[]]), (None, 1.0)]
    for x0, starts in refused:
        with pytest.raises(InvalidInput) as raised:
            tasks.starts_of(x0, starts, identity)
        assert raised.value.error_type == "shape_mismatch"


def test_limits_count_every_element_of_a_tensor_start() -> None:
    """lbfgs history and trajectory elements count 20 numbers per [2, 10] start."""
    lbfgs, adam = OPTIMIZERS.get("lbfgs"), OPTIMIZERS.get("adam")
    limits = tasks.RunLimits(max_steps=10**9, max_elements=2 * 100 * 3 * 20, max_trajectory_points=10**6)
    tasks.check_runs(STARTS, [(lbfgs, lbfgs.defaults())], 1, None, limits)  # 2 x 100 x 3 runs x 20: at the limit
    with pytest.raises(LimitExceeded) as raised:
        tasks.check_runs(STARTS, [(lbfgs, {**lbfgs.defaults(), "history_size": 101})], 1, None, limits)
    assert raised.value.error_type == "state_too_large"
    trajectory = tasks.RunLimits(max_steps=10**9, max_elements=3 * 12 * 20, max_trajectory_points=10**6)
    tasks.check_runs(STARTS, [(adam, adam.defaults())], 10, 1, trajectory)  # 3 runs x 12 points x 20
    with pytest.raises(LimitExceeded) as raised:
        tasks.check_runs(STARTS, [(adam, adam.defaults())], 11, 1, trajectory)
    assert raised.value.error_type == "trajectory_too_long"
