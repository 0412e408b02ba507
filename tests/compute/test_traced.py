"""Traced value-and-gradient graphs against autograd, generated from the objective registry and
the expression language; what cannot be traced falls back to autograd; runs equal torch.optim
loops whichever way their gradients come, and stop at their exact step inside batched stretches."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from service.compute.expressions.language import Limits, compile_program
from service.compute.optimisation import Objective, Schedule, optimize
from service.compute.optimisation.objectives import OBJECTIVES, ObjectiveSpec
from service.compute.optimisation.optimizers import OPTIMIZERS
from service.compute.optimisation.traced import trace_value_and_grad
from tests.compute.test_optimize import STARTS, independent_loop
from tests.compute.test_optimizer_oracles import FUSED, service_settings

F64 = torch.float64


def points(objective: ObjectiveSpec, dtype: torch.dtype, count: int = 6) -> torch.Tensor:
    d = objective.dimension or 3
    lows = torch.tensor([lo for lo, _ in objective.box(d)], dtype=dtype)
    highs = torch.tensor([hi for _, hi in objective.box(d)], dtype=dtype)
    unit = torch.rand(count, d, generator=torch.Generator().manual_seed(3), dtype=dtype)
    return lows + unit * (highs - lows)


def autograd_value_and_grad(fn: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    values = fn(x)
    (grad,) = torch.autograd.grad(values.sum(), x)
    return values.detach(), grad


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
@pytest.mark.parametrize("objective", list(OBJECTIVES), ids=lambda objective: objective.name)
def test_traced_catalog_objectives_equal_autograd_bitwise(objective: ObjectiveSpec, dtype: torch.dtype) -> None:
    x = points(objective, dtype)
    values, grad = trace_value_and_grad(objective.fn, x, batched=True)(x)
    expected_values, expected_grad = autograd_value_and_grad(objective.fn, x)
    assert torch.equal(values, expected_values)
    assert torch.equal(grad, expected_grad)


@pytest.mark.parametrize("objective", list(OBJECTIVES), ids=lambda objective: objective.name)
def test_traced_objectives_written_for_one_point_are_vectorised(objective: ObjectiveSpec) -> None:
    """vmap over a function of one point gives every row's value and gradient."""
    x = points(objective, F64)
    values, grad = trace_value_and_grad(objective.fn, x, batched=False)(x)
    expected_values, expected_grad = autograd_value_and_grad(objective.fn, x)
    torch.testing.assert_close(values, expected_values, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)


Formula = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
EXPRESSIONS: list[tuple[str, Formula]] = [
    (
        "(x[0]**2 + x[1] - 11)**2 + (x[0] + x[1]**2 - 7)**2",
        lambda x, w, y: (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2,
    ),
    (
        "a = x[0]\nb = x[1]\n(1 - a)**2 + 100 * (b - a**2)**2",
        lambda x, w, y: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2,
    ),
    (
        "sum(x**2) + 0.5 * logsumexp(x, dim=0)",
        lambda x, w, y: torch.sum(x**2) + 0.5 * torch.logsumexp(x, dim=0),
    ),
    ("mse(sigmoid(w @ x), y)", lambda x, w, y: F.mse_loss(torch.sigmoid(w @ x), y)),
    (
        "norm(x) + abs(x[0]) * exp(-x[1]) + 2 ** x[0]",
        lambda x, w, y: torch.linalg.vector_norm(x) + x[0].abs() * torch.exp(-x[1]) + 2 ** x[0],
    ),
]


@pytest.mark.parametrize(("source", "formula"), EXPRESSIONS, ids=[source for source, _ in EXPRESSIONS])
def test_traced_expressions_equal_autograd(source: str, formula: Formula) -> None:
    """The traced graph of a compiled formula equals autograd through the same program, and
    both equal the formula written in torch (value, and autograd through it)."""
    w = torch.tensor([[0.5, -1.0], [2.0, 0.25], [-0.3, 0.7]], dtype=F64)
    y = torch.tensor([1.0, 0.0, 0.5], dtype=F64)
    program = compile_program(source, frozenset({"x", "w", "y"}), F64, torch.device("cpu"), Limits())

    def fn(x: torch.Tensor) -> torch.Tensor:
        return program({"x": x, "w": w, "y": y}).reshape(())

    def independent(x: torch.Tensor) -> torch.Tensor:
        return formula(x, w, y)

    x = torch.tensor([[1.0, 0.5], [-2.0, 3.0], [0.25, -0.75]], dtype=F64)
    values, grad = trace_value_and_grad(fn, x, batched=False)(x)
    for row in range(len(x)):
        value, expected = autograd_value_and_grad(fn, x[row])
        torch.testing.assert_close(values[row], value, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad[row], expected, rtol=1e-12, atol=1e-12)
        value, expected = autograd_value_and_grad(independent, x[row])
        torch.testing.assert_close(values[row], value, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad[row], expected, rtol=1e-12, atol=1e-12)


def _e(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.ones((), dtype=x.dtype))


OBJECTIVE_FORMULAS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "himmelblau": lambda x: (x[..., 0] ** 2 + x[..., 1] - 11) ** 2 + (x[..., 0] + x[..., 1] ** 2 - 7) ** 2,
    "rosenbrock": lambda x: (100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2).sum(-1),
    "rastrigin": lambda x: 10 * x.shape[-1] + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(-1),
    "ackley": lambda x: (
        -20 * torch.exp(-0.2 * torch.sqrt((x**2).mean(-1)))
        - torch.exp(torch.cos(2 * math.pi * x).mean(-1))
        + 20
        + _e(x)
    ),
    "beale": lambda x: (
        (1.5 - x[..., 0] + x[..., 0] * x[..., 1]) ** 2
        + (2.25 - x[..., 0] + x[..., 0] * x[..., 1] ** 2) ** 2
        + (2.625 - x[..., 0] + x[..., 0] * x[..., 1] ** 3) ** 2
    ),
    "booth": lambda x: (x[..., 0] + 2 * x[..., 1] - 7) ** 2 + (2 * x[..., 0] + x[..., 1] - 5) ** 2,
    "sphere": lambda x: (x**2).sum(-1),
    "matyas": lambda x: 0.26 * (x[..., 0] ** 2 + x[..., 1] ** 2) - 0.48 * x[..., 0] * x[..., 1],
    "three_hump_camel": lambda x: (
        2 * x[..., 0] ** 2 - 1.05 * x[..., 0] ** 4 + x[..., 0] ** 6 / 6 + x[..., 0] * x[..., 1] + x[..., 1] ** 2
    ),
    "goldstein_price": lambda x: (
        (
            1
            + (x[..., 0] + x[..., 1] + 1) ** 2
            * (
                19
                - 14 * x[..., 0]
                + 3 * x[..., 0] ** 2
                - 14 * x[..., 1]
                + 6 * x[..., 0] * x[..., 1]
                + 3 * x[..., 1] ** 2
            )
        )
        * (
            30
            + (2 * x[..., 0] - 3 * x[..., 1]) ** 2
            * (
                18
                - 32 * x[..., 0]
                + 12 * x[..., 0] ** 2
                + 48 * x[..., 1]
                - 36 * x[..., 0] * x[..., 1]
                + 27 * x[..., 1] ** 2
            )
        )
    ),
    "styblinski_tang": lambda x: ((x**4 - 16 * x**2 + 5 * x) / 2).sum(-1),
    "mccormick": lambda x: (
        torch.sin(x[..., 0] + x[..., 1]) + (x[..., 0] - x[..., 1]) ** 2 - 1.5 * x[..., 0] + 2.5 * x[..., 1] + 1
    ),
}
"""The catalog's objectives as their textbook formulas, written here."""


def test_objective_formulas_cover_the_catalog() -> None:
    assert set(OBJECTIVE_FORMULAS) == {objective.name for objective in OBJECTIVES}


@pytest.mark.parametrize("objective", list(OBJECTIVES), ids=lambda objective: objective.name)
def test_traced_objectives_equal_their_textbook_formulas(objective: ObjectiveSpec) -> None:
    x = points(objective, F64)
    values, grad = trace_value_and_grad(objective.fn, x, batched=True)(x)
    expected_values, expected_grad = autograd_value_and_grad(OBJECTIVE_FORMULAS[objective.name], x)
    torch.testing.assert_close(values, expected_values, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)


def branching(x: torch.Tensor) -> torch.Tensor:
    """A Python branch on a value: tracing must refuse it rather than bake one side in."""
    return (x**2).sum(-1) if float(x.sum()) > 0 else (x**4).sum(-1)


def test_a_python_branch_on_values_cannot_be_traced_and_runs_fall_back_to_autograd() -> None:
    with pytest.raises(Exception):  # noqa: B017, PT011  # whichever error torch raises for it
        trace_value_and_grad(branching, STARTS, batched=True)
    request = {"lr": 0.01}
    sgd = OPTIMIZERS.get("sgd")
    settings = service_settings("sgd", request)
    runs = optimize(Objective(branching, batched=False), STARTS, [(sgd, settings)], Schedule(30, 10)).runs()
    for run, start in zip(runs, STARTS, strict=True):
        expected = independent_loop("sgd", request, branching, start, 30)
        torch.testing.assert_close(run.x, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("objective", list(OBJECTIVES), ids=lambda objective: objective.name)
def test_traced_runs_on_every_objective_equal_independent_loops(objective: ObjectiveSpec) -> None:
    request = {"lr": 0.01}
    adam = OPTIMIZERS.get("adam")
    settings = service_settings("adam", request)
    starts = points(objective, F64, count=3)
    runs = optimize(Objective(objective.fn, True), starts, [(adam, settings)], Schedule(150, 100)).runs()
    for run, start in zip(runs, starts, strict=True):
        expected = independent_loop("adam", request, objective.fn, start, 150, fused="adam" in FUSED)
        torch.testing.assert_close(run.x, expected, rtol=0, atol=1e-7)


def test_a_run_that_diverges_inside_a_batched_stretch_stops_at_its_step() -> None:
    """Steps between recorded ones are taken in batches; a non-finite value inside one is found,
    the batch taken back, and the run stops exactly where a step-by-step loop would."""

    def blows_up(x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x[..., 0] ** 2) + x[..., 1] ** 2  # overflows once |x0| passes about 26.6

    sgd = OPTIMIZERS.get("sgd")
    settings = {**sgd.defaults(), "lr": 1e-3, "momentum": 0.9}
    starts = torch.tensor([[2.5, 1.0], [0.1, 1.0]], dtype=F64)
    batched = optimize(Objective(blows_up, True), starts, [(sgd, settings)], Schedule(500, 1_000)).runs()
    one_by_one = optimize(Objective(blows_up, True), starts, [(sgd, settings)], Schedule(500, 1)).runs()
    assert batched[0].stopped == one_by_one[0].stopped == "diverged"
    assert batched[0].steps == one_by_one[0].steps
    assert not math.isfinite(batched[0].value)
    assert batched[1].stopped == one_by_one[1].stopped == "max_steps"
    for fast, slow in zip(batched, one_by_one, strict=True):
        torch.testing.assert_close(fast.x, slow.x, rtol=0, atol=0)
