"""Forward mode, Hessian-vector products and batches of points, against torch.func and
torch.autograd.functional applied to independent torch formulas (tests/compute/test_language.py
generates them over the whole language), in float64 to 1e-10; and the refusals of each."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

from service.compute.expressions.differentiate import Derivative, differentiate
from service.compute.expressions.language import Limits, compile_program
from service.compute.ops.activations import ACTIVATIONS, evaluate_activation
from service.errors import InvalidInput, ServiceError
from tests import oracles
from tests.compute.test_language import (
    GENERATED_TOLERANCE,
    Program,
    finite,
    generated_inputs,
    programs,
    scaled,
)
from tests.helpers import examples

F64 = torch.float64
CPU = torch.device("cpu")
LIMITS = Limits()
HIMMELBLAU = "(x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2"


def himmelblau(x: torch.Tensor) -> torch.Tensor:
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


def random_like(tensors: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(t.shape, generator=generator, dtype=F64) for name, t in tensors.items()}


def tolerance_for(program: Program) -> float:
    """hardsigmoid's derivative is computed in float32 by torch (see test_language.py)."""
    return 1e-7 if "hardsigmoid" in program.source else GENERATED_TOLERANCE


def run(source: str, inputs: dict[str, torch.Tensor], wanted: list[Derivative], **options: Any) -> Any:
    program = compile_program(source, frozenset(inputs), F64, CPU, LIMITS)
    return differentiate(program, inputs, options.pop("wrt", None), wanted, max_entries=10**7, **options)


# --- One point: jvp and hvp against torch.func.jvp and torch.autograd.functional.hvp.


@settings(max_examples=examples(40))
@given(programs(scalar=False), st.integers(0, 2**32 - 1))
def test_random_formulas_jvp_equals_torch_func_jvp(program: Program, seed: int) -> None:
    inputs = generated_inputs(seed)
    tangents = random_like(inputs, seed + 1)
    names = list(inputs)

    def fn(*values: torch.Tensor) -> torch.Tensor:
        return program.fn(dict(zip(names, values, strict=True)))

    value, expected = torch.func.jvp(fn, tuple(inputs.values()), tuple(tangents.values()))[:2]
    assume(finite(value, expected))
    result = run(program.source, inputs, ["jvp"], tangents=tangents)
    assert result.grad is None and result.hvp is None
    torch.testing.assert_close(result.value, value, **scaled(GENERATED_TOLERANCE, value))
    torch.testing.assert_close(result.jvp, expected, **scaled(tolerance_for(program), expected))


@settings(max_examples=examples(40))
@given(programs(scalar=True), st.integers(0, 2**32 - 1))
def test_random_scalar_formulas_hvp_equals_autograd_functional_hvp(program: Program, seed: int) -> None:
    assume("hardsigmoid" not in program.source)  # torch has no second derivative of it
    inputs = generated_inputs(seed)
    tangents = random_like(inputs, seed + 1)
    names = list(inputs)

    def fn(*values: torch.Tensor) -> torch.Tensor:
        return program.fn(dict(zip(names, values, strict=True)))

    value, expected = torch.autograd.functional.hvp(fn, tuple(inputs.values()), tuple(tangents.values()))
    assume(finite(value, *expected))
    result = run(program.source, inputs, ["grad", "jvp", "hvp"], tangents=tangents)
    for name, product in zip(names, expected, strict=True):
        torch.testing.assert_close(result.hvp[name], product, **scaled(GENERATED_TOLERANCE, product))


@settings(max_examples=examples(40))
@given(programs(scalar=False), st.integers(0, 2**32 - 1))
def test_random_formulas_hvp_with_a_grad_output_is_the_derivative_of_the_vjp(program: Program, seed: int) -> None:
    """For a value of any shape, hvp with grad_output g is the Hessian of g . value times the
    tangents: the double backward of a VJP, against torch.autograd.functional.hvp."""
    assume("hardsigmoid" not in program.source)
    inputs = generated_inputs(seed)
    tangents = random_like(inputs, seed + 1)
    names = list(inputs)
    g = torch.randn(program.shape, generator=torch.Generator().manual_seed(seed + 2), dtype=F64)

    def weighted(*values: torch.Tensor) -> torch.Tensor:
        return (program.fn(dict(zip(names, values, strict=True))) * g).sum()

    value, expected = torch.autograd.functional.hvp(weighted, tuple(inputs.values()), tuple(tangents.values()))
    assume(finite(value, *expected))
    result = run(program.source, inputs, ["grad", "hvp"], tangents=tangents, grad_output=g)
    for name, product in zip(names, expected, strict=True):
        torch.testing.assert_close(result.hvp[name], product, **scaled(GENERATED_TOLERANCE, product))


def test_hvp_of_himmelblau_is_the_hessian_column() -> None:
    x = torch.tensor([3.0, 2.0], dtype=F64)
    result = run(HIMMELBLAU, {"x": x}, ["jvp", "hvp"], tangents={"x": torch.tensor([1.0, 0.0], dtype=F64)})
    assert result.jvp.item() == 0.0
    assert torch.equal(result.hvp["x"], torch.tensor([74.0, 20.0], dtype=F64))


def test_inputs_without_a_tangent_move_by_zero() -> None:
    x, w = torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([2.0, 3.0], dtype=F64)
    t = torch.tensor([1.0, 2.0], dtype=F64)
    result = run("sum(sin(x) * w ** 2)", {"x": x, "w": w}, ["jvp", "hvp"], tangents={"x": t})
    expected_jvp = torch.func.jvp(lambda a: torch.sum(torch.sin(a) * w**2), (x,), (t,))[1]
    torch.testing.assert_close(result.jvp, expected_jvp, rtol=1e-12, atol=1e-12)
    # d/dw of grad_x . t = 2 w cos(x) t; d/dx of it = -sin(x) w^2 t
    torch.testing.assert_close(result.hvp["x"], -torch.sin(x) * w**2 * t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(result.hvp["w"], 2 * w * torch.cos(x) * t, rtol=1e-12, atol=1e-12)


def test_a_linear_formula_has_a_zero_hvp() -> None:
    x = torch.tensor([1.0, 2.0], dtype=F64)
    result = run("sum(3 * x)", {"x": x}, ["hvp"], tangents={"x": torch.ones(2, dtype=F64)})
    assert torch.equal(result.hvp["x"], torch.zeros(2, dtype=F64))


@pytest.mark.parametrize("spec", list(ACTIVATIONS), ids=lambda spec: spec.name)
def test_every_activation_jvp_equals_torch_func_jvp_of_its_reference(spec: Any) -> None:
    """Through POST /v1/activations' compute core, and called from a formula."""
    x = torch.linspace(-3.9, 3.7, 7, dtype=F64)
    t = torch.linspace(1.0, -0.5, 7, dtype=F64)
    reference = oracles.ACTIVATIONS[spec.name]
    options = {"dim": 0} if "dim" in {param.name for param in spec.params} else {}
    params = {**{param.name: param.default for param in spec.params}, **options}
    expected = torch.func.jvp(lambda a: reference(a, **options), (x,), (t,))[1]
    tolerance = 1e-7 if spec.name == "hardsigmoid" else 1e-10
    direct = evaluate_activation(spec, x, params, tangent=t, max_jacobian_elements=1)
    assert direct.jvp is not None
    torch.testing.assert_close(direct.jvp, expected, rtol=tolerance, atol=tolerance)
    written = "".join(f", {key}={value}" for key, value in options.items())
    in_formula = run(f"{spec.name}(x{written})", {"x": x}, ["jvp"], tangents={"x": t})
    torch.testing.assert_close(in_formula.jvp, expected, rtol=tolerance, atol=tolerance)


def test_an_activation_tangent_of_another_shape_is_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        evaluate_activation(
            ACTIVATIONS.get("tanh"), torch.zeros(3), {}, tangent=torch.zeros(2), max_jacobian_elements=1
        )
    assert caught.value.error_type == "shape_mismatch"
    assert caught.value.details == {"where": "tangent"}


def test_losses_in_formulas_have_exact_jvp_and_hvp() -> None:
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(4, 5, generator=generator, dtype=F64)
    t = torch.tensor([0, 3, 1, 4])
    v = torch.randn(4, 5, generator=generator, dtype=F64)

    def fn(a: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(a, t, label_smoothing=0.1)

    result = run("cross_entropy(z, t, label_smoothing=0.1)", {"z": z, "t": t}, ["jvp", "hvp"], tangents={"z": v})
    torch.testing.assert_close(result.jvp, torch.func.jvp(fn, (z,), (v,))[1], rtol=1e-12, atol=1e-12)
    expected = torch.autograd.functional.hvp(fn, z, v)[1]
    torch.testing.assert_close(result.hvp["z"], expected, rtol=1e-10, atol=1e-10)


# --- Batches: each point equal to evaluating it alone (torch.func.vmap).


@settings(max_examples=examples(30))
@given(programs(scalar=True), st.integers(0, 2**32 - 1), st.sets(st.sampled_from(["s", "u", "x", "y", "W"])))
def test_random_formulas_at_a_batch_of_points_equal_vmap(program: Program, seed: int, shared: set[str]) -> None:
    """Value, grad, Hessian, jvp and hvp at three points, some inputs shared by all points: the
    oracle maps torch.func over the independent formula, and hvp point by point."""
    assume("hardsigmoid" not in program.source)
    note(f"source: {program.source!r}, shared: {sorted(shared)}")
    points = [generated_inputs(seed + i) for i in range(3)]
    names = list(points[0])
    batch = [name for name in names if name not in shared]
    inputs = {name: points[0][name] if name in shared else torch.stack([p[name] for p in points]) for name in names}
    tangents = {
        name: torch.stack([t[name] for t in (random_like(p, seed + 7 + i) for i, p in enumerate(points))])
        for name in names
    }
    assume(batch)

    def fn(*values: torch.Tensor) -> torch.Tensor:
        return program.fn(dict(zip(names, values, strict=True)))

    argnums = tuple(range(len(names)))
    in_dims = tuple(None if name in shared else 0 for name in names)
    xs = tuple(inputs.values())
    value = torch.func.vmap(fn, in_dims=in_dims)(*xs)
    grads = torch.func.vmap(torch.func.grad(fn, argnums=argnums), in_dims=in_dims)(*xs)
    hessians = torch.func.vmap(torch.func.jacrev(torch.func.jacrev(fn, argnums), argnums), in_dims=in_dims)(*xs)
    jvp = torch.func.vmap(
        lambda *both: torch.func.jvp(fn, both[: len(names)], both[len(names) :])[1],
        in_dims=(*in_dims, *(0,) * len(names)),
    )(*xs, *tangents.values())
    hvps = [
        torch.autograd.functional.hvp(
            fn,
            tuple(points[0][n] if n in shared else points[i][n] for n in names),
            tuple(t[i] for t in tangents.values()),
        )[1]
        for i in range(3)
    ]
    assume(finite(value, *grads, jvp, *(block for row in hessians for block in row), *(p for h in hvps for p in h)))

    result = run(program.source, inputs, ["grad", "hessian", "jvp", "hvp"], tangents=tangents, batch=batch)
    torch.testing.assert_close(result.value, value, **scaled(GENERATED_TOLERANCE, value))
    torch.testing.assert_close(result.jvp, jvp, **scaled(GENERATED_TOLERANCE, jvp))
    for i, name in enumerate(names):
        torch.testing.assert_close(result.grad[name], grads[i], **scaled(GENERATED_TOLERANCE, grads[i]))
        per_point = torch.stack([h[i] for h in hvps])
        torch.testing.assert_close(result.hvp[name], per_point, **scaled(GENERATED_TOLERANCE, per_point))
        for j, other in enumerate(names):
            block = hessians[i][j]
            torch.testing.assert_close(result.hessian[name][other], block, **scaled(GENERATED_TOLERANCE, block))


@settings(max_examples=examples(30))
@given(programs(scalar=False), st.integers(0, 2**32 - 1))
def test_random_formulas_of_any_shape_at_a_batch_equal_vmap(program: Program, seed: int) -> None:
    """The vector-Jacobian product with a cotangent per point, and the Jacobian per point."""
    points = [generated_inputs(seed + i) for i in range(2)]
    names = list(points[0])
    inputs = {name: torch.stack([p[name] for p in points]) for name in names}

    def fn(*values: torch.Tensor) -> torch.Tensor:
        return program.fn(dict(zip(names, values, strict=True)))

    xs = tuple(inputs.values())
    argnums = tuple(range(len(names)))
    value = torch.func.vmap(fn)(*xs)
    cotangent = torch.randn(value.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    vjps = torch.func.vmap(lambda g, *v: torch.func.vjp(fn, *v)[1](g))(cotangent, *xs)
    jacobians = torch.func.vmap(torch.func.jacrev(fn, argnums=argnums))(*xs)
    assume(finite(value, *vjps, *jacobians))
    result = run(program.source, inputs, ["grad", "jacobian"], grad_output=cotangent, batch=names)
    tolerance = tolerance_for(program)
    torch.testing.assert_close(result.value, value, **scaled(GENERATED_TOLERANCE, value))
    for i, name in enumerate(names):
        torch.testing.assert_close(result.grad[name], vjps[i], **scaled(tolerance, vjps[i]))
        torch.testing.assert_close(result.jacobian[name], jacobians[i], **scaled(tolerance, jacobians[i]))


def test_a_batch_of_class_indices_is_checked_point_by_point() -> None:
    z = torch.zeros(2, 3, 4, dtype=F64)
    good = torch.tensor([[0, 3, 1], [2, 2, 0]])
    result = run("cross_entropy(z, t)", {"z": z, "t": good}, ["grad", "hessian"], batch=["z", "t"])
    assert result.value.shape == (2,)
    assert result.hessian["z"]["z"].shape == (2, 3, 4, 3, 4)
    bad = torch.tensor([[0, 3, 1], [2, 7, 0]])
    with pytest.raises(InvalidInput) as caught:
        run("cross_entropy(z, t)", {"z": z, "t": bad}, ["grad"], batch=["z", "t"])
    assert caught.value.error_type == "class_index_out_of_range"
    assert "class index 7 at [1, 1]" in caught.value.message


def test_the_seed_perceptron_gradient_at_a_batch_of_inputs() -> None:
    """The seed's perceptron (x [1, 10], w [2, 10]) at five inputs x: a gradient of w per x."""
    generator = torch.Generator().manual_seed(5)
    xs = torch.randn(5, 1, 10, generator=generator, dtype=F64)
    w = torch.randn(2, 10, generator=generator, dtype=F64)
    result = run("o = sigmoid(x @ w.T)\nmse(ones_like(o), o)", {"x": xs, "w": w}, ["grad"], wrt=["w"], batch=["x"])
    for i in range(5):
        leaf = w.clone().requires_grad_(True)
        torch.nn.functional.mse_loss(torch.ones(1, 2, dtype=F64), torch.sigmoid(xs[i] @ leaf.t())).backward()
        torch.testing.assert_close(result.grad["w"][i], leaf.grad, rtol=1e-12, atol=1e-12)


# --- Refusals: each a clear 400 naming what is wrong.

X = {"x": torch.tensor([3.0, 2.0], dtype=F64)}
POINTS = {"x": torch.tensor([[3.0, 2.0], [0.0, 0.0]], dtype=F64)}
REFUSALS: list[tuple[str, dict[str, torch.Tensor], list[Derivative], dict[str, Any], str, str]] = [
    (
        HIMMELBLAU,
        X,
        ["jvp"],
        {"tangents": {"x": torch.zeros(3, dtype=F64)}},
        "shape_mismatch",
        "tangents.x has shape [3]",
    ),
    (HIMMELBLAU, X, ["jvp"], {}, "missing_tangents", "jvp and hvp need tangents"),
    (HIMMELBLAU, X, ["grad"], {"tangents": {"x": torch.zeros(2, dtype=F64)}}, "invalid_tangents", "add one of them"),
    (HIMMELBLAU, X, ["hvp"], {"tangents": {"y": torch.zeros(2, dtype=F64)}}, "unknown_name", "tangents names 'y'"),
    ("x * 2", X, ["hvp"], {"tangents": {"x": torch.zeros(2, dtype=F64)}}, "not_scalar", "shape [2]"),
    ("x * 2", POINTS, ["hvp"], {"tangents": X, "batch": ["x"]}, "shape_mismatch", "points first"),
    ("x * 2", POINTS, ["hessian"], {"batch": ["x"]}, "not_scalar", "shape [2] at each point"),
    (HIMMELBLAU, X, ["grad"], {"batch": ["y"]}, "unknown_name", "batch names 'y'"),
    (HIMMELBLAU, X, ["grad"], {"batch": ["x", "x"]}, "invalid_batch", "twice"),
    (
        "sum(s * x)",
        {**X, "s": torch.tensor(2.0, dtype=F64)},
        ["grad"],
        {"batch": ["s"]},
        "invalid_batch",
        "single number",
    ),
    ("x", {"x": torch.zeros(0, 2, dtype=F64)}, ["grad"], {"batch": ["x"]}, "invalid_batch", "no points"),
    (
        "sum(x * y)",
        {"x": torch.zeros(2, 3, dtype=F64), "y": torch.zeros(3, 3, dtype=F64)},
        ["grad"],
        {"batch": ["x", "y"]},
        "batch_mismatch",
        "x has 2, y has 3",
    ),
    (HIMMELBLAU, POINTS, ["grad"], {"batch": ["x"], "grad_output": torch.ones(3, dtype=F64)}, "shape_mismatch", "[2]"),
    ("x ** 2", X, ["hvp"], {"tangents": X, "grad_output": torch.ones(1, dtype=F64)}, "shape_mismatch", "grad_output"),
    ("x ** 2", X, ["jvp"], {"tangents": X, "grad_output": torch.ones(2, 1, dtype=F64)}, "shape_mismatch", "[2, 1]"),
]


@pytest.mark.parametrize(("source", "inputs", "wanted", "options", "error_type", "says"), REFUSALS)
def test_bad_derivative_requests_are_clear_400s(
    source: str,
    inputs: dict[str, torch.Tensor],
    wanted: list[Derivative],
    options: dict[str, Any],
    error_type: str,
    says: str,
) -> None:
    with pytest.raises(ServiceError) as caught:
        run(source, inputs, wanted, **options)
    assert caught.value.error_type == error_type
    assert says in caught.value.message
