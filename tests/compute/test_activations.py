"""Every registered activation, generated from the registry: against torch in float64, by
finite differences (gradcheck / gradgradcheck), and its Jacobian against torch's."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from service.compute.activations import ACTIVATIONS, SMALL_ONES, evaluate_activation, ones_for
from service.compute.registry import OpSpec, Sample
from service.errors import InvalidInput, LimitExceeded

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


def sample_input(sample: Sample, seed: int = 0) -> torch.Tensor:
    if sample.values is not None:
        return torch.tensor(sample.values, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    return 2.5 * torch.randn(sample.shape, generator=generator, dtype=torch.float64)


def params_of(spec: OpSpec, sample: Sample) -> dict[str, Any]:
    return {**spec.defaults(), **sample.params}


def test_registry_covers_the_contract() -> None:
    missing = [name for name in CONTRACT_NAMES if name not in ACTIVATIONS]
    assert not missing


@pytest.mark.parametrize(("spec", "sample"), CASES)
def test_value_and_vjp_equal_torch_float64(spec: OpSpec, sample: Sample) -> None:
    x = sample_input(sample)
    params = params_of(spec, sample)
    grad_output = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    result = evaluate_activation(spec, x, params, grad_output=grad_output, max_jacobian_elements=1000)

    reference_input = x.clone().requires_grad_(True)
    reference = spec.fn(reference_input, **params)
    reference.backward(grad_output)
    assert torch.equal(result.output, reference.detach())
    assert reference_input.grad is not None
    assert torch.equal(result.grad, reference_input.grad)


EDGE_VALUES = (0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0, 6.0, -6.0, 20.0, -20.0, 1e-30, float("inf"), -float("inf"))
BACKWARD_CASES = [
    pytest.param(spec, sample, id=f"{spec.name}-{index}")
    for spec in ACTIVATIONS
    if spec.backward is not None
    for index, sample in enumerate(spec.samples)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("spec", "sample"), BACKWARD_CASES)
def test_backward_kernel_equals_autograd(spec: OpSpec, sample: Sample, dtype: torch.dtype) -> None:
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
def test_default_cotangent_gives_autograds_gradient(spec: OpSpec, sample: Sample, dtype: torch.dtype) -> None:
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
def test_gradients_match_finite_differences(spec: OpSpec, sample: Sample) -> None:
    x = sample_input(sample).requires_grad_(True)
    params = params_of(spec, sample)

    def fn(t: torch.Tensor) -> torch.Tensor:
        return spec.fn(t, **params)

    assert torch.autograd.gradcheck(fn, (x,))
    if spec.elementwise and not spec.piecewise_linear:
        assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize(("spec", "sample"), ELEMENTWISE_CASES)
def test_second_derivative_is_the_derivative_of_the_first(spec: OpSpec, sample: Sample) -> None:
    x = sample_input(sample)
    params = params_of(spec, sample)
    result = evaluate_activation(spec, x, params, second_order=True, max_jacobian_elements=1)
    assert result.grad2 is not None
    step = 1e-6
    upper = evaluate_activation(spec, x + step, params, max_jacobian_elements=1).grad
    lower = evaluate_activation(spec, x - step, params, max_jacobian_elements=1).grad
    torch.testing.assert_close(result.grad2, (upper - lower) / (2 * step), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("spec", "sample"), CASES)
def test_jacobian_equals_torch(spec: OpSpec, sample: Sample) -> None:
    x = sample_input(sample)
    params = params_of(spec, sample)
    result = evaluate_activation(spec, x, params, want_jacobian=True, max_jacobian_elements=10_000)
    expected = torch.autograd.functional.jacobian(lambda t: spec.fn(t, **params), x)
    assert result.jacobian is not None
    assert result.jacobian.shape == result.output.shape + x.shape
    torch.testing.assert_close(result.jacobian, expected, rtol=1e-12, atol=1e-12)


def test_seed_softmax_jacobian_row_is_grad_of_one_output() -> None:
    """The seed: p = softmax(a, dim=0); autograd.grad(p[1], [a]) is row 1 of the Jacobian,
    and the Jacobian is diag(p) - p p^T."""
    a = torch.rand(3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    spec = ACTIVATIONS.get("softmax")
    result = evaluate_activation(spec, a, {"dim": 0}, want_jacobian=True, max_jacobian_elements=9)
    leaf = a.clone().requires_grad_(True)
    (row,) = torch.autograd.grad(F.softmax(leaf, dim=0)[1], [leaf])
    assert result.jacobian is not None
    torch.testing.assert_close(result.jacobian[1], row)
    p = F.softmax(a, dim=0)
    torch.testing.assert_close(result.jacobian, torch.diag(p) - torch.outer(p, p))


def test_sigmoid_derivatives_are_the_textbook_ones() -> None:
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    result = evaluate_activation(ACTIVATIONS.get("sigmoid"), x, {}, second_order=True, max_jacobian_elements=1)
    s = torch.sigmoid(x)
    torch.testing.assert_close(result.grad, s * (1 - s))
    assert result.grad2 is not None
    torch.testing.assert_close(result.grad2, s * (1 - s) * (1 - 2 * s))


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
