"""Every registered activation, generated from the registry: its value, VJP and Jacobian against the
hand-written references of tests/oracles.py in float64, its f'' against differences of its f', the
references by finite differences (gradcheck / gradgradcheck), and its backward kernels against
autograd, bitwise. tests/compute/test_oracles.py adds parameter values beyond the samples."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from service.compute.ops.activations import (
    ACTIVATIONS,
    SMALL_ONES,
    ActivationSample,
    ActivationSpec,
    evaluate_activation,
    ones_for,
)
from service.errors import InvalidInput, LimitExceeded, NotFound
from tests import oracles
from tests.conftest import AppClient
from tests.helpers import assert_error, from_wire

TIGHT: dict[str, Any] = {"rtol": 1e-12, "atol": 1e-12}
# Central differences in float64 with this step are good to about 3e-9 (rounding of values up to
# ~25, over 2e-6) plus 1e-12 relative (truncation), so these tolerances leave little room.
STEP = 1e-6
FINITE_DIFFERENCE: dict[str, Any] = {"rtol": 1e-7, "atol": 5e-9}

CASES = [
    pytest.param(spec, sample, id=f"{spec.name}-{index}")
    for spec in ACTIVATIONS
    for index, sample in enumerate(spec.samples)
]


CONTRACT_NAMES = tuple(
    [
        "sigmoid",
        "tanh",
        "relu",
        "leaky_relu",
        "selu",
        "softplus",
        "elu",
        "celu",
        "gelu",
        "silu",
        "mish",
        "hardtanh",
        "hardsigmoid",
        "hardswish",
        "relu6",
        "softsign",
        "logsigmoid",
        "tanhshrink",
        "softmax",
        "log_softmax",
    ]
)
ELEMENTWISE_CASES = [
    pytest.param(spec, sample, id=f"{spec.name}-{index}")
    for spec in ACTIVATIONS
    if spec.elementwise
    for index, sample in enumerate(spec.samples)
]


def sample_input(sample: ActivationSample, seed: int = 0) -> torch.Tensor:
    if sample.values is not None:
        return torch.tensor(sample.values, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    return 2.5 * torch.randn(sample.shape, generator=generator, dtype=torch.float64)


def params_of(spec: ActivationSpec, sample: ActivationSample) -> dict[str, Any]:
    return {**spec.defaults(), **sample.params}


def prefixed(label: str) -> Callable[[str], str]:
    """An assert_close msg that says which result is off."""
    return lambda message: f"{label}: {message}"


def oracle_for(spec: ActivationSpec, params: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    oracle = oracles.ACTIVATIONS[spec.name]
    return lambda t: oracle(t, **params)


def oracle_vjp(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, cotangent: torch.Tensor) -> torch.Tensor:
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(leaf), leaf, cotangent)
    return grad


def oracle_second_derivative(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """f'' of an elementwise f by double autograd: zero where f' does not depend on x at all."""
    leaf = x.clone().requires_grad_(True)
    output = fn(leaf)
    (first,) = torch.autograd.grad(output, leaf, torch.ones_like(output), create_graph=True)
    if not first.requires_grad:
        return torch.zeros_like(x)
    (second,) = torch.autograd.grad(first, leaf, torch.ones_like(first), allow_unused=True, materialize_grads=True)
    return second


# Where torch itself differentiates in float64 through a float32 constant, so the service (torch's
# kernels) is good to about 1e-7 relative there, and no better: for each activation, the results
# it spoils and the params it spoils them for. test_torch_float32_constants pins each, so that a
# torch that fixes them fails there and the allowance can go.
TORCH_FLOAT32_RTOL = 1e-6


def float32_rounds(value: float) -> bool:
    return float(torch.tensor(value, dtype=torch.float32)) != value


TORCH_FLOAT32_DERIVATIVES: dict[str, tuple[frozenset[str], Callable[[dict[str, Any]], bool]]] = {
    # aten's hardsigmoid_backward multiplies by 1.0f / 6.0f.
    "hardsigmoid": (frozenset({"grad", "jacobian"}), lambda params: True),
    # autograd's celu derivative (derivatives.yaml) divides by alpha.toFloat(); the service's own
    # backward kernel passes 1 / alpha in double, so only grad2 and the Jacobian suffer.
    "celu": (frozenset({"grad2", "jacobian"}), lambda params: float32_rounds(params.get("alpha", 1.0))),
}


def assert_derivative(
    actual: torch.Tensor | None, expected: torch.Tensor, name: str, params: dict[str, Any], what: str
) -> None:
    """``actual`` (the service's grad, grad2 or jacobian) equals ``expected`` to 1e-12, or to
    TORCH_FLOAT32_RTOL where torch's float32 constants spoil it."""
    assert actual is not None, f"{name} {what}"
    spoilt, applies = TORCH_FLOAT32_DERIVATIVES.get(name, (frozenset(), lambda params: False))
    tolerance = {"rtol": TORCH_FLOAT32_RTOL, "atol": 1e-12} if what in spoilt and applies(params) else TIGHT
    torch.testing.assert_close(actual, expected, **tolerance, msg=prefixed(f"{name} {what}"))


def test_torch_float32_constants() -> None:
    """The float32 constants TORCH_FLOAT32_DERIVATIVES allows for are still in torch (when this
    fails, torch has fixed them: drop the allowance)."""
    x = torch.tensor([1.0], dtype=torch.float64)
    hardsigmoid = evaluate_activation(ACTIVATIONS.get("hardsigmoid"), x, {}, max_jacobian_elements=1)
    assert hardsigmoid.grad.item() == float(torch.tensor(1 / 6, dtype=torch.float32)) != 1 / 6
    celu = evaluate_activation(ACTIVATIONS.get("celu"), -x, {"alpha": 0.4}, second_order=True, max_jacobian_elements=1)
    assert celu.grad2 is not None
    assert abs(celu.grad2.item() / (torch.exp(-x / 0.4) / 0.4).item() - 1) > 1e-9


def test_registry_covers_the_contract() -> None:
    missing = [name for name in CONTRACT_NAMES if name not in ACTIVATIONS]
    assert not missing


@pytest.mark.parametrize(("spec", "sample"), CASES)
def test_value_and_vjp_equal_the_oracle(spec: ActivationSpec, sample: ActivationSample) -> None:
    x = sample_input(sample)
    params = params_of(spec, sample)
    grad_output = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    result = evaluate_activation(spec, x, params, grad_output=grad_output, max_jacobian_elements=1000)
    fn = oracle_for(spec, params)
    torch.testing.assert_close(result.output, fn(x), **TIGHT)
    assert_derivative(result.grad, oracle_vjp(fn, x, grad_output), spec.name, params, "grad")


EDGE_VALUES = (0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0, 6.0, -6.0, 20.0, -20.0, 1e-30, float("inf"), -float("inf"))
BACKWARD_CASES = [
    pytest.param(spec, sample, id=f"{spec.name}-{index}")
    for spec in ACTIVATIONS
    if spec.backward is not None
    for index, sample in enumerate(spec.samples)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("spec", "sample"), BACKWARD_CASES)
def test_backward_kernel_equals_autograd(spec: ActivationSpec, sample: ActivationSample, dtype: torch.dtype) -> None:
    """An entry's direct backward is bitwise autograd's VJP, at the kinks and saturations too."""
    assert spec.backward is not None
    x = sample_input(sample).to(dtype)
    if spec.elementwise:  # thresholds, kinks, saturation and infinities
        x = torch.cat([x.flatten(), torch.tensor(EDGE_VALUES, dtype=dtype)])
    params = params_of(spec, sample)
    grad_output = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    reference_input = x.clone().requires_grad_(True)
    reference = spec.fn(reference_input, **params)
    (expected,) = torch.autograd.grad(reference, reference_input, grad_output)
    direct = spec.backward(grad_output, x, reference.detach(), params)
    # Bitwise, NaN where autograd gives NaN (silu'(inf) is inf * 0, say).
    torch.testing.assert_close(direct, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("spec", "sample"), BACKWARD_CASES)
def test_default_cotangent_gives_autograds_gradient(
    spec: ActivationSpec, sample: ActivationSample, dtype: torch.dtype
) -> None:
    """Without grad_output the gradient is autograd's VJP with ones, bitwise, whether the ones
    are the shared small ones or made for a large input; the shared ones stay ones."""
    params = params_of(spec, sample)
    small = sample_input(sample).to(dtype)
    large = torch.linspace(-4, 4, 2 * (SMALL_ONES + 1), dtype=dtype).reshape(2, -1)
    for x in (small, large, small):
        reference_input = x.clone().requires_grad_(True)
        reference = spec.fn(reference_input, **params)
        (expected,) = torch.autograd.grad(reference, reference_input, torch.ones_like(reference))
        result = evaluate_activation(spec, x, params, max_jacobian_elements=1)
        torch.testing.assert_close(result.grad, expected, rtol=0, atol=0, equal_nan=True)
    shared = ones_for(small)
    assert shared is ones_for(small)  # made once
    assert result.grad.data_ptr() != shared.data_ptr()  # the gradient is not the shared ones
    assert torch.equal(shared, torch.ones_like(small))  # nothing wrote into them


def test_common_activations_have_a_backward_kernel() -> None:
    fast = {spec.name for spec in ACTIVATIONS if spec.backward is not None}
    assert {"sigmoid", "tanh", "relu", "gelu", "silu", "softmax", "log_softmax"} <= fast


@pytest.mark.parametrize(("spec", "sample"), CASES)
def test_oracle_gradients_match_finite_differences(spec: ActivationSpec, sample: ActivationSample) -> None:
    """The references' own derivatives, which the service is held to."""
    x = sample_input(sample).requires_grad_(True)
    fn = oracle_for(spec, params_of(spec, sample))
    assert torch.autograd.gradcheck(fn, (x,), eps=STEP, **FINITE_DIFFERENCE)
    if spec.elementwise:
        assert torch.autograd.gradgradcheck(fn, (x,), eps=STEP, **FINITE_DIFFERENCE)


@pytest.mark.parametrize(("spec", "sample"), ELEMENTWISE_CASES)
def test_second_derivative_is_the_oracles(spec: ActivationSpec, sample: ActivationSample) -> None:
    x = sample_input(sample)
    params = params_of(spec, sample)
    result = evaluate_activation(spec, x, params, second_order=True, max_jacobian_elements=1)
    expected = oracle_second_derivative(oracle_for(spec, params), x)
    assert_derivative(result.grad2, expected, spec.name, params, "grad2")


@pytest.mark.parametrize(("spec", "sample"), ELEMENTWISE_CASES)
def test_second_derivative_is_the_derivative_of_the_first(spec: ActivationSpec, sample: ActivationSample) -> None:
    x = sample_input(sample)
    params = params_of(spec, sample)
    result = evaluate_activation(spec, x, params, second_order=True, max_jacobian_elements=1)
    assert result.grad2 is not None
    upper = evaluate_activation(spec, x + STEP, params, max_jacobian_elements=1).grad
    lower = evaluate_activation(spec, x - STEP, params, max_jacobian_elements=1).grad
    torch.testing.assert_close(result.grad2, (upper - lower) / (2 * STEP), **FINITE_DIFFERENCE)


@pytest.mark.parametrize(("spec", "sample"), CASES)
def test_jacobian_equals_the_oracles(spec: ActivationSpec, sample: ActivationSample) -> None:
    x = sample_input(sample)
    params = params_of(spec, sample)
    result = evaluate_activation(spec, x, params, want_jacobian=True, max_jacobian_elements=10_000)
    expected = torch.autograd.functional.jacobian(oracle_for(spec, params), x)
    assert result.jacobian is not None
    assert result.jacobian.shape == result.output.shape + x.shape
    assert_derivative(result.jacobian, expected, spec.name, params, "jacobian")


def test_seed_softmax_jacobian_row_is_grad_of_one_output() -> None:
    """The seed: p = softmax(a, dim=0); autograd.grad(p[1], [a]) is row 1 of the Jacobian,
    and the Jacobian is diag(p) - p p^T."""
    a = torch.rand(3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    spec = ACTIVATIONS.get("softmax")
    result = evaluate_activation(spec, a, {"dim": 0}, want_jacobian=True, max_jacobian_elements=9)
    leaf = a.clone().requires_grad_(True)
    (row,) = torch.autograd.grad(oracles.softmax(leaf, dim=0)[1], [leaf])
    assert result.jacobian is not None
    torch.testing.assert_close(result.jacobian[1], row, **TIGHT)
    p = oracles.softmax(a, dim=0)
    torch.testing.assert_close(result.jacobian, torch.diag(p) - torch.outer(p, p), **TIGHT)


def test_sigmoid_derivatives_are_the_textbook_ones() -> None:
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    result = evaluate_activation(ACTIVATIONS.get("sigmoid"), x, {}, second_order=True, max_jacobian_elements=1)
    s = oracles.sigmoid(x)
    torch.testing.assert_close(result.grad, s * (1 - s), **TIGHT)
    assert result.grad2 is not None
    torch.testing.assert_close(result.grad2, s * (1 - s) * (1 - 2 * s), **TIGHT)


def test_piecewise_linear_second_derivative_is_zero() -> None:
    x = torch.tensor([-4.0, -2.0, -0.5, 0.5, 2.0, 7.0], dtype=torch.float64)
    for spec in (spec for spec in ACTIVATIONS if spec.piecewise_linear):
        result = evaluate_activation(spec, x, spec.defaults(), second_order=True, max_jacobian_elements=1)
        assert result.grad2 is not None
        assert torch.equal(result.grad2, torch.zeros_like(x)), spec.name


def test_non_elementwise_second_order_is_refused() -> None:
    spec = ACTIVATIONS.get("softmax")
    with pytest.raises(InvalidInput) as caught:
        evaluate_activation(spec, torch.ones(3), {"dim": 0}, second_order=True, max_jacobian_elements=9)
    assert caught.value.error_type == "not_elementwise"


def test_jacobian_over_the_limit_is_refused_before_computing() -> None:
    spec = ACTIVATIONS.get("sigmoid")
    with pytest.raises(LimitExceeded):
        evaluate_activation(spec, torch.ones(100), {}, want_jacobian=True, max_jacobian_elements=9_999)


@pytest.mark.parametrize(
    ("name", "params", "shape"),
    [("softmax", {"dim": 2}, (2, 2)), ("log_softmax", {"dim": -3}, (4,)), ("softmin", {"dim": 1}, ())],
)
def test_dim_out_of_range_is_invalid_input(name: str, params: dict[str, Any], shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInput) as caught:
        evaluate_activation(ACTIVATIONS.get(name), torch.ones(shape), params, max_jacobian_elements=1)
    assert caught.value.error_type == "invalid_param"


# --- Issue 14: what a client sees, with the expected values written out (not read from the registry).


def test_dim_error_names_the_param_and_the_valid_range() -> None:
    with pytest.raises(InvalidInput) as caught:
        evaluate_activation(ACTIVATIONS.get("softmax"), torch.ones(2, 2), {"dim": 2}, max_jacobian_elements=1)
    assert caught.value.body() == {
        "error": {
            "type": "invalid_param",
            "message": "dim=2 is out of range for an input with 2 dimension(s) (expected -2 <= dim < 2).",
            "param": "dim",
        }
    }


def test_hardtanh_accepts_equal_bounds_and_refuses_crossed_ones() -> None:
    spec = ACTIVATIONS.get("hardtanh")
    x = torch.tensor([-2.0, 0.25, 3.0], dtype=torch.float64)
    result = evaluate_activation(spec, x, {"min_val": 0.5, "max_val": 0.5}, max_jacobian_elements=1)
    assert result.output.tolist() == [0.5, 0.5, 0.5]
    assert result.grad.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(InvalidInput) as caught:
        evaluate_activation(spec, x, {"min_val": 0.75, "max_val": 0.5}, max_jacobian_elements=1)
    assert caught.value.body() == {
        "error": {"type": "invalid_param", "message": "min_val must not exceed max_val.", "param": "min_val"}
    }


def test_second_order_of_a_non_elementwise_activation_explains_itself() -> None:
    with pytest.raises(InvalidInput) as caught:
        evaluate_activation(
            ACTIVATIONS.get("log_softmax"), torch.ones(3), {"dim": 0}, second_order=True, max_jacobian_elements=9
        )
    assert caught.value.message == (
        "log_softmax is not elementwise, so it has no elementwise second derivative; "
        "ask for the jacobian, or differentiate an expression for its Hessian."
    )


def test_grad_output_of_the_wrong_shape_is_a_shape_mismatch() -> None:
    with pytest.raises(InvalidInput) as caught:
        evaluate_activation(
            ACTIVATIONS.get("tanh"), torch.ones(2, 3), {}, grad_output=torch.ones(3, 2), max_jacobian_elements=1
        )
    assert caught.value.error_type == "shape_mismatch"
    assert caught.value.message == "grad_output has shape [3, 2], but tanh's output has shape [2, 3]."


def test_an_unknown_activation_is_an_unknown_activation() -> None:
    with pytest.raises(NotFound) as caught:
        ACTIVATIONS.get("nope")
    assert caught.value.error_type == "unknown_activation"


def test_what_was_not_asked_for_is_none() -> None:
    result = evaluate_activation(ACTIVATIONS.get("relu"), torch.ones(3), {}, max_jacobian_elements=1)
    assert result.grad2 is None
    assert result.jacobian is None


def test_the_default_cotangent_lives_on_the_outputs_device() -> None:
    # Only CPU outputs share the cached ones; any other device gets its own (meta stands in for cuda).
    ones = ones_for(torch.empty(3, device="meta"))
    assert ones.device.type == "meta"
    assert ones.shape == (3,)


def test_softplus_is_exactly_linear_above_its_default_threshold() -> None:
    # beta * x = 20.5 > threshold = 20: the output is x itself and the slope exactly 1; the smooth
    # branch would give x + exp(-20.5) (about 1.2e-9 more) and a slope 1.2e-9 short of 1.
    x = torch.tensor([20.5], dtype=torch.float64)
    result = evaluate_activation(
        ACTIVATIONS.get("softplus"), x, {"beta": 1.0, "threshold": 20.0}, max_jacobian_elements=1
    )
    assert result.output.tolist() == [20.5]
    assert result.grad.tolist() == [1.0]
    assert ACTIVATIONS.get("softplus").defaults() == {"beta": 1.0, "threshold": 20.0}


@pytest.mark.parametrize(
    ("name", "params", "x", "expected"),
    [
        ("softplus", {"beta": 0.5}, 0.0, 2 * math.log(2.0)),
        ("softplus", {"beta": -1.0}, 0.0, -math.log(2.0)),
        ("softplus", {"beta": 0.0}, 1.0, math.inf),
        ("softplus", {"threshold": 0.5}, 1.0, 1.0),
        ("softplus", {"threshold": -1.0}, -0.5, -0.5),
        ("celu", {"alpha": 0.5}, -1.0, 0.5 * (math.exp(-2.0) - 1.0)),
        ("celu", {"alpha": -0.5}, -1.0, -0.5 * (math.exp(2.0) - 1.0)),
        ("softshrink", {"lambd": 0.5}, 2.0, 1.5),
        ("softshrink", {"lambd": 0.0}, 2.0, 2.0),
        ("hardshrink", {"lambd": 0.5}, 0.25, 0.0),
        ("hardshrink", {"lambd": 0.0}, 0.25, 0.25),
        ("hardshrink", {"lambd": -0.5}, 0.25, 0.25),
        ("hardtanh", {"min_val": 0.5, "max_val": 0.5}, 2.0, 0.5),
        ("gelu", {"approximate": "none"}, 0.0, 0.0),
        ("gelu", {"approximate": "tanh"}, 0.0, 0.0),
    ],
)
def test_params_just_inside_their_bounds_are_accepted(
    client: AppClient, name: str, params: dict[str, Any], x: float, expected: float
) -> None:
    response = client.post(f"/v1/activations/{name}", json={"input": [x], "params": params, "dtype": "float64"})
    assert response.status_code == 200, response.text
    output = from_wire(response.json()["output"], torch.float64)
    assert output.tolist() == pytest.approx([expected], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("softplus", {"beta": 3.5e38}),
        ("celu", {"alpha": 0.0}),
        ("celu", {"alpha": 1e-39}),
        ("softshrink", {"lambd": -0.5}),
        ("hardshrink", {"lambd": -3.5e38}),
        ("hardtanh", {"min_val": 0.75, "max_val": 0.5}),
        ("gelu", {"approximate": "erf"}),
    ],
)
def test_params_outside_their_bounds_are_validation_errors(
    client: AppClient, name: str, params: dict[str, Any]
) -> None:
    """A 422 naming the parameter (hardtanh's crossed bounds: min_val)."""
    error = assert_error(
        client.post(f"/v1/activations/{name}", json={"input": [1.0], "params": params}), 422, "validation_error"
    )
    assert [item["loc"] for item in error["errors"]] == [["body", "params", next(iter(params))]]


@pytest.mark.parametrize("alpha", [0.0, 1e-300, -1e-300])
def test_celu_alpha_torch_cannot_divide_by_is_refused_with_the_reason(client: AppClient, alpha: float) -> None:
    response = client.post("/v1/activations/celu", json={"input": [1.0], "params": {"alpha": alpha}})
    assert response.status_code == 422, response.text
    (error,) = response.json()["error"]["errors"]
    assert error["loc"] == ["body", "params", "alpha"]
    assert error["msg"] == "alpha must not be 0, nor so close to it that 1 / alpha exceeds float32's range"
