"""The step machine (``service.compute.optimisation.machine``): its tape evaluates every catalog
objective and the language's functions as torch's own calls do, and the runs it steps equal
those stepped with torch calls alone (and torch.optim's loops: see test_optimizer_oracles)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.compute.expressions.language import Limits, compile_program
from service.compute.ops.functions import FUNCTIONS
from service.compute.optimisation import Objective, Schedule, machine, optimize
from service.compute.optimisation.objectives import OBJECTIVES
from service.compute.optimisation.optimizers import OPTIMIZERS
from service.compute.optimisation.steppers import MachineStepper
from service.compute.optimisation.traced import trace_value_and_grad
from tests.compute.test_optimizer_oracles import service_settings

pytestmark = pytest.mark.skipif(machine.library() is None, reason="no C compiler to build the step machine")

ARITHMETIC = {"himmelblau", "rosenbrock", "beale", "booth", "sphere", "matyas", "three_hump_camel"}
"""Objectives of +, -, *, / and integer powers alone: the machine's numbers are torch's, bitwise."""
LIMITS = Limits(10_000, 2_000, 64)
TOLERANCE = {torch.float64: 1e-13, torch.float32: 1e-5}
"""Relative, where the C maths library's exp, sin... round their last bit unlike torch's."""


def starts(d: int, dtype: torch.dtype, count: int = 5) -> torch.Tensor:
    return torch.randn(count, d, dtype=dtype, generator=torch.Generator().manual_seed(d * count))


def evaluated(graph: torch.fx.GraphModule, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    program = machine.program(graph, rows)
    if program is None:
        return None
    library = machine.library()
    assert library is not None
    engine = machine.Machine(library, program, rows.clone())
    assert engine.evaluate() == 0
    return engine.values.clone(), engine.grads.clone()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", [entry.name for entry in OBJECTIVES])
def test_the_tape_of_every_catalog_objective_equals_torchs_calls(name: str, dtype: torch.dtype) -> None:
    entry = OBJECTIVES.get(name)
    rows = starts(entry.dimension or 3, dtype)
    traced = trace_value_and_grad(entry.fn, rows, batched=True)
    result = evaluated(traced.graph_module, rows)
    assert result is not None, f"the machine cannot run {name}"
    values, grads = traced(rows)
    if name in ARITHMETIC:
        assert torch.equal(result[0], values) and torch.equal(result[1], grads)
    else:
        torch.testing.assert_close(result, (values, grads), rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


SUPPORTED = {"sigmoid", "tanh", "exp", "log", "log1p", "sqrt", "abs", "sin", "cos", "tan", "sinh", "cosh", "sum"}
"""The language's functions the machine must take; others may fall back to torch's calls."""


@pytest.mark.parametrize("name", [name for name, spec in FUNCTIONS.items() if spec.category in ("math", "activation")])
def test_every_function_of_the_language_is_evaluated_as_torch_does_or_left_to_torch(name: str) -> None:
    """A formula of one function of the variable: where the tape takes its graph, the tape's
    values and gradients are torch's; the common functions are taken."""
    if name in ("matmul", "dot", "maximum", "minimum", "where", "reshape", "transpose", "clamp"):
        expression = {
            "matmul": "sum(matmul(x, x))",
            "dot": "dot(x, x)",
            "maximum": "sum(maximum(x, 0.5 * x))",
            "minimum": "sum(minimum(x, 0.5 * x))",
            "where": "sum(where(x > 0.4, x, x ** 2))",
            "reshape": "sum(reshape(x, 3) ** 2)",
            "transpose": "sum(transpose(reshape(x, 3, 1), 0, 1) ** 3)",
            "clamp": "sum(clamp(x, 0.2, 0.8) ** 2)",
        }[name]
    else:
        expression = f"sum({name}(x * 0.3 + 0.5))"
    program = compile_program(expression, frozenset({"x"}), torch.float64, torch.device("cpu"), LIMITS, 10_000)
    rows = starts(3, torch.float64).abs() + 0.1

    def fn(x: torch.Tensor) -> torch.Tensor:
        return program({"x": x}).reshape(())

    traced = trace_value_and_grad(fn, rows, batched=False)
    result = evaluated(traced.graph_module, rows)
    if result is None:
        assert name not in SUPPORTED, f"the machine cannot run {expression}"
        return
    torch.testing.assert_close(result, traced(rows), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
@pytest.mark.parametrize("name", [entry.name for entry in OBJECTIVES])
def test_runs_on_the_machine_equal_runs_with_torchs_calls(name: str, optimizer: str) -> None:
    """Every catalog objective, with stops by tolerance and divergence among the runs (so that
    stopped runs are held while the others go on): the same steps, points and reasons."""
    entry = OBJECTIVES.get(name)
    rows = starts(entry.dimension or 4, torch.float64, count=6) * 2
    request = {"lr": 1e-3, "momentum": 0.9} if optimizer == "sgd" else {"lr": 0.05}  # not chaotic: ulps stay ulps
    spec = OPTIMIZERS.get(optimizer)
    schedule = Schedule(300, 7, tolerance=1e-3)
    objective = Objective(entry.fn, batched=True)
    on_machine = optimize(objective, rows, [(spec, service_settings(optimizer, request))], schedule).runs()
    with_torch = optimize(
        objective, rows, [(spec, service_settings(optimizer, request))], schedule, step_machine=False
    ).runs()
    for ours, theirs in zip(on_machine, with_torch, strict=True):
        assert (ours.steps, ours.stopped, ours.trajectory.step) == (
            theirs.steps,
            theirs.stopped,
            theirs.trajectory.step,
        )
        torch.testing.assert_close(ours.x, theirs.x, rtol=1e-7, atol=1e-7, equal_nan=True)


def test_a_group_too_large_or_on_another_path_is_left_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = OBJECTIVES.get("himmelblau")
    traced = trace_value_and_grad(entry.fn, starts(2, torch.float64), batched=True)
    adam = OPTIMIZERS.get("adam")
    hyper = service_settings("adam", {})
    assert MachineStepper.of(traced, starts(2, torch.float64), adam, hyper) is not None
    many = starts(2, torch.float64, count=machine.MAX_ROWS_ELEMENTS // 2 + 1)
    assert MachineStepper.of(trace_value_and_grad(entry.fn, many, True), many, adam, hyper) is None
    monkeypatch.setattr(machine, "library", lambda: None)  # no C compiler: torch's calls
    assert MachineStepper.of(traced, starts(2, torch.float64), adam, hyper) is None


def test_the_machine_builds_into_a_folder_and_refuses_without_a_compiler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = machine.build(tmp_path)
    assert built.name == machine.library_name() and built.stat().st_size > 0
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert machine.compiler() is None
    with pytest.raises(RuntimeError, match="no C compiler"):
        machine.build(tmp_path)
