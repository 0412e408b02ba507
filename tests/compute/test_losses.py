"""Every registered loss, generated from the registry: values and gradients against the
hand-written references of tests/oracles.py in float64, gradients against finite differences of
the service's own loss, and the seed's identities. tests/compute/test_oracles.py adds parameter
values beyond the samples."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from fastapi.exceptions import RequestValidationError

from service.api.endpoints import validate_params
from service.compute.ops.losses import (
    LOSSES,
    GradName,
    LossSample,
    LossSpec,
    evaluate_loss,
    index_target_shape,
    loss_value,
)
from service.errors import InvalidInput, NotFound
from tests import oracles

CONTRACT_NAMES = [
    "mse",
    "l1",
    "smooth_l1",
    "huber",
    "cross_entropy",
    "nll",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "kl_div",
    "poisson_nll",
    "soft_margin",
    "entropy",
]

TIGHT: dict[str, Any] = {"rtol": 1e-12, "atol": 1e-12}
# Central differences in float64 with this step are good to about 1e-9 here (rounding over 2e-6)
# plus 1e-12 relative (truncation), so these tolerances leave little room.
STEP = 1e-6
FINITE_DIFFERENCE: dict[str, Any] = {"rtol": 1e-7, "atol": 5e-9}


LossInputs = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, dict[str, Any]]
"""Input, target, weight and params, as make_inputs gives them."""
Tensors = dict[GradName, torch.Tensor | None]


CASES = [
    pytest.param(spec, sample, id=f"{spec.name}-{index}")
    for spec in LOSSES
    for index, sample in enumerate(spec.samples)
]


def make_inputs(spec: LossSpec, sample: LossSample, seed: int = 0) -> LossInputs:
    """Input, target, weight and params (tensor params made tensors) for one sample, in float64."""
    generator = torch.Generator().manual_seed(seed)
    shape = sample.input_shape
    class_dim = 1 if len(shape) >= 2 else 0

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=generator, dtype=torch.float64)

    raw = 1.5 * randn(*shape)
    input = {
        "real": raw,
        "unit": 0.05 + 0.9 * torch.rand(shape, generator=generator, dtype=torch.float64),
        "log_probabilities": F.log_softmax(raw, dim=class_dim),
        "probabilities": F.softmax(raw, dim=-1),
    }[sample.input_kind]
    target: torch.Tensor | None = None
    if sample.target == "index":
        target = torch.randint(0, shape[class_dim], index_target_shape(input), generator=generator)
    elif sample.target == "probabilities":
        target = F.softmax(randn(*shape), dim=class_dim)
    elif sample.target == "unit":
        target = torch.rand(shape, generator=generator, dtype=torch.float64)
    elif sample.target == "sign":
        target = torch.where(randn(*shape) > 0, 1.0, -1.0).to(torch.float64)
    elif sample.target == "float":
        target = randn(*shape)
    weight = None
    if sample.weight_shape is not None:
        weight = 0.5 + torch.rand(sample.weight_shape, generator=generator, dtype=torch.float64)
    params: dict[str, Any] = {**spec.defaults(), **sample.params}
    for param in spec.params:
        if param.tensor and params[param.name] is not None:
            params[param.name] = torch.tensor(params[param.name], dtype=torch.float64)
    return input, target, weight, params


def test_registry_covers_the_contract_and_every_loss_has_a_reference() -> None:
    assert [name for name in CONTRACT_NAMES if name not in LOSSES] == []
    assert sorted(oracles.LOSSES) == sorted(spec.name for spec in LOSSES)


def prefixed(label: str) -> Callable[[str], str]:
    """An assert_close msg that says which result is off."""
    return lambda message: f"{label}: {message}"


def call(fn: Callable[..., torch.Tensor], tensors: Tensors, params: dict[str, Any]) -> torch.Tensor:
    return fn(tensors["input"], tensors["target"], tensors["weight"], **params)


def service_loss(spec: LossSpec, tensors: Tensors, params: dict[str, Any]) -> torch.Tensor:
    """loss_value: the service's loss without gradients (evaluate_loss's, checked where used)."""
    input = tensors["input"]
    assert input is not None
    return loss_value(spec, input, tensors["target"], tensors["weight"], params)


def torch_refuses(spec: LossSpec, tensors: Tensors, name: GradName, params: dict[str, Any]) -> bool:
    """Whether torch (the registered function) refuses to differentiate w.r.t. ``name``: the one
    reason the service may return no gradient for a float tensor."""
    leaves = {
        key: None if value is None else value.clone().requires_grad_(key == name) for key, value in tensors.items()
    }
    leaf = leaves[name]
    assert leaf is not None
    try:
        value = call(spec.fn, leaves, params)
        torch.autograd.grad(value, leaf, torch.ones_like(value))
    except RuntimeError as error:
        if "not differentiable" not in str(error):
            raise
        return True
    return False


def oracle_gradients(
    spec: LossSpec, tensors: Tensors, params: dict[str, Any], cotangent: torch.Tensor, names: list[GradName]
) -> dict[GradName, torch.Tensor]:
    """autograd.grad of the oracle w.r.t. the named tensors."""
    leaves = {
        key: None if value is None else value.clone().requires_grad_(key in names) for key, value in tensors.items()
    }
    wanted = []
    for name in names:
        leaf = leaves[name]
        assert leaf is not None
        wanted.append(leaf)
    value = call(oracles.LOSSES[spec.name], leaves, params)
    return dict(zip(names, torch.autograd.grad(value, wanted, cotangent), strict=True))


def check_gradients(
    spec: LossSpec,
    tensors: Tensors,
    params: dict[str, Any],
    cotangent: torch.Tensor,
    grads: dict[GradName, torch.Tensor | None],
    tolerance: dict[str, Any],
) -> None:
    """The service's gradients (``grads``) are the oracle's, wherever the service gives one; it
    gives one for every float tensor torch can differentiate, and none for the others."""
    given: list[GradName] = []
    for name, tensor in tensors.items():
        ours = grads[name]
        if tensor is None or not tensor.is_floating_point():
            assert ours is None, name
        elif ours is None:
            refuses = torch_refuses(spec, tensors, name, {**spec.defaults(), **params})
            assert refuses, f"torch differentiates {name}, but we returned null"
        else:
            given.append(name)
    assert "input" in given, "every loss has a gradient w.r.t. its input"
    for name, expected in oracle_gradients(spec, tensors, params, cotangent, given).items():
        ours = grads[name]
        assert ours is not None
        torch.testing.assert_close(ours.to(expected.dtype), expected, **tolerance, msg=prefixed(f"grad {name}"))


def check_against_the_oracle(spec: LossSpec, inputs: LossInputs) -> None:
    """evaluate_loss's loss and gradients (with a random cotangent) are the oracle's in float64."""
    input, target, weight, params = inputs
    tensors: Tensors = {"input": input, "target": target, "weight": weight}
    expected = call(oracles.LOSSES[spec.name], tensors, params)
    cotangent = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1), dtype=expected.dtype)
    result = evaluate_loss(spec, input, target, weight, params, grad_output=cotangent)
    torch.testing.assert_close(result.loss, expected, **TIGHT)
    check_gradients(spec, tensors, params, cotangent, result.grads, TIGHT)


def check_finite_differences(spec: LossSpec, inputs: LossInputs) -> None:
    """Every gradient the service returns against central differences of its own loss (it hands
    out no graph, so this is the service's own gradcheck)."""
    input, target, weight, params = inputs
    tensors: Tensors = {"input": input, "target": target, "weight": weight}
    loss = service_loss(spec, tensors, params)
    cotangent = torch.randn(loss.shape, generator=torch.Generator().manual_seed(2), dtype=loss.dtype)
    result = evaluate_loss(spec, input, target, weight, params, grad_output=cotangent)
    assert torch.equal(result.loss, loss)
    for name, grad in result.grads.items():
        tensor = tensors[name]
        if grad is None:
            continue
        assert tensor is not None
        flat, numeric = tensor.flatten(), torch.zeros(tensor.numel(), dtype=tensor.dtype)
        for index in range(flat.numel()):
            step = torch.zeros_like(flat)
            step[index] = STEP
            upper = service_loss(spec, {**tensors, name: (flat + step).reshape(tensor.shape)}, params)
            lower = service_loss(spec, {**tensors, name: (flat - step).reshape(tensor.shape)}, params)
            numeric[index] = ((upper - lower) / (2 * STEP) * cotangent).sum()
        torch.testing.assert_close(grad, numeric.reshape(tensor.shape), **FINITE_DIFFERENCE, msg=prefixed(name))


def check_oracle_gradcheck(spec: LossSpec, inputs: LossInputs) -> None:
    """gradcheck of the oracle w.r.t. every float tensor (its gradients are what the service's are
    held to)."""
    input, target, weight, params = inputs
    tensors: Tensors = {"input": input, "target": target, "weight": weight}
    floats = {name: tensor for name, tensor in tensors.items() if tensor is not None and tensor.is_floating_point()}

    def fn(*values: torch.Tensor) -> torch.Tensor:
        return call(oracles.LOSSES[spec.name], {**tensors, **dict(zip(floats, values, strict=True))}, params)

    leaves = tuple(tensor.clone().requires_grad_(True) for tensor in floats.values())
    assert torch.autograd.gradcheck(fn, leaves, eps=STEP, **FINITE_DIFFERENCE)


@pytest.mark.parametrize(("spec", "sample"), CASES)
def test_loss_and_gradients_equal_the_oracle(spec: LossSpec, sample: LossSample) -> None:
    check_against_the_oracle(spec, make_inputs(spec, sample))


@pytest.mark.parametrize(("spec", "sample"), CASES)
def test_gradients_match_finite_differences(spec: LossSpec, sample: LossSample) -> None:
    check_finite_differences(spec, make_inputs(spec, sample))


@pytest.mark.parametrize(("spec", "sample"), CASES)
def test_oracle_gradients_match_finite_differences(spec: LossSpec, sample: LossSample) -> None:
    check_oracle_gradcheck(spec, make_inputs(spec, sample))


def test_seed_cross_entropy_is_nll_of_log_softmax() -> None:
    """The seed: F.cross_entropy(logits, [3]) == F.nll_loss(log(softmax(logits)), [3])."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(1, 784, generator=generator, dtype=torch.float64)
    w = torch.randn(10, 784, generator=generator, dtype=torch.float64)
    logits = x @ w.t()
    target = torch.tensor([3])
    cross = evaluate_loss(LOSSES.get("cross_entropy"), logits, target, None, LOSSES.get("cross_entropy").defaults())
    log_probabilities = torch.log(oracles.softmax(logits, dim=1))
    nll = evaluate_loss(LOSSES.get("nll"), log_probabilities, target, None, LOSSES.get("nll").defaults())
    torch.testing.assert_close(cross.loss, nll.loss)
    assert cross.grads["input"] is not None
    one_hot = (torch.arange(10) == target[:, None]).to(logits.dtype)
    torch.testing.assert_close(cross.grads["input"], oracles.softmax(logits, dim=1) - one_hot)


def test_seed_entropy_in_bits() -> None:
    """The seed: Entropy = -(a * torch.log2(a)).sum(); a uniform distribution of 4 has 2 bits."""
    spec = LOSSES.get("entropy")
    for a, bits in ((torch.full((4,), 0.25), 2.0), (torch.tensor([0.1, 0.1, 0.1, 0.7]), None)):
        result = evaluate_loss(spec, a, None, None, {**spec.defaults(), "base": "2"})
        expected = -(a * torch.log2(a)).sum()
        torch.testing.assert_close(result.loss, expected)
        if bits is not None:
            assert result.loss.item() == pytest.approx(bits)


def test_seed_mse_gradient() -> None:
    """The seed: mse = F.mse_loss(torch.ones(1), x * w) with w = 2; d mse / d w = 2 (x w - 1) x."""
    x, w = torch.tensor([1.5]), torch.full([1], 2.0)
    result = evaluate_loss(LOSSES.get("mse"), x * w, torch.ones(1), None, {"reduction": "mean"})
    assert result.grads["input"] is not None
    # chain rule through input = x * w
    torch.testing.assert_close(result.grads["input"] * x, 2 * (x * w - 1) * x)


def refusal(spec_name: str, input: Any, target: Any = None, weight: Any = None, **params: Any) -> InvalidInput:
    """The error evaluate_loss raises for these float64 inputs (``params`` over the defaults)."""
    spec = LOSSES.get(spec_name)

    def as_tensor(value: Any) -> torch.Tensor | None:
        return None if value is None else torch.tensor(value, dtype=torch.float64)

    x = torch.tensor(input, dtype=torch.float64)
    with pytest.raises(InvalidInput) as caught:
        evaluate_loss(spec, x, as_tensor(target), as_tensor(weight), {**spec.defaults(), **params})
    return caught.value


def bad(spec_name: str, input: Any, target: Any = None, weight: Any = None, **params: Any) -> str:
    return refusal(spec_name, input, target, weight, **params).error_type


def test_bad_inputs_are_refused_before_torch() -> None:
    assert bad("cross_entropy", [[1.0, 2.0]], [2.0]) == "class_index_out_of_range"
    assert bad("cross_entropy", [[1.0, 2.0]], [-1.0]) == "class_index_out_of_range"
    assert bad("nll", [[1.0, 2.0]], [0.5]) == "invalid_dtype"
    assert bad("nll", [[1.0, 2.0]], [[0.5, 0.5]]) == "shape_mismatch"
    assert bad("cross_entropy", [[1.0, 2.0]], [0.0, 1.0, 1.0]) == "shape_mismatch"
    assert bad("cross_entropy", 1.0, 0.0) == "shape_mismatch"
    assert bad("cross_entropy", [[1.0, 2.0]], [0.0], weight=[1.0]) == "shape_mismatch"
    assert bad("binary_cross_entropy", [0.5, 1.5], [1.0, 0.0]) == "out_of_range"
    assert bad("binary_cross_entropy", [0.5, float("nan")], [1.0, 0.0]) == "out_of_range"
    assert bad("binary_cross_entropy", [0.5, 0.5], [1.0, 2.0]) == "out_of_range"
    assert bad("mse", [1.0, 2.0], [1.0, 2.0, 3.0]) == "shape_mismatch"
    assert bad("mse", [1.0, 2.0], [[1.0, 2.0]]) == "shape_mismatch"
    assert bad("mse", [1.0, 2.0]) == "missing_target"
    assert bad("mse", [1.0], [1.0], weight=[1.0]) == "unexpected_weight"
    assert bad("entropy", [0.5, 0.5], [1.0]) == "unexpected_target"
    assert bad("entropy", [0.5, 0.5], dim=1) == "invalid_param"


def test_ignore_index_is_allowed_outside_the_class_range() -> None:
    spec = LOSSES.get("cross_entropy")
    logits = torch.tensor([[1.0, 2.0], [0.5, 0.1]], dtype=torch.float64)
    result = evaluate_loss(spec, logits, torch.tensor([1, -100]), None, spec.defaults())
    torch.testing.assert_close(result.loss, oracles.cross_entropy(logits[:1], torch.tensor([1])), **TIGHT)


NAN = math.nan
REFUSALS: list[tuple[str, Any, Any, Any, dict[str, Any], str, str, dict[str, Any]]] = [
    # (loss, input, target, weight, params, error type, message, details)
    (
        "binary_cross_entropy", [0.5, 1.5], [1.0, 0.0], None, {}, "out_of_range",
        "binary_cross_entropy needs input values in [0, 1] (probabilities); "
        "use binary_cross_entropy_with_logits for logits.", {"where": "input"},
    ),
    (
        "binary_cross_entropy", [0.5, 0.5], [1.0, -0.5], None, {}, "out_of_range",
        "binary_cross_entropy needs target values in [0, 1] (probabilities); "
        "use binary_cross_entropy_with_logits for logits.", {"where": "target"},
    ),
    (
        "cross_entropy", [[1.0, 2.0], [0.5, 0.1]], [0.0, 2.0], None, {}, "class_index_out_of_range",
        "target holds class index 2 at [1], outside [0, 2) (and not ignore_index=-100).", {"where": "target[1]"},
    ),
    (
        "cross_entropy", [[[1.0, 2.0], [0.5, 0.1]]], [[0.0, 3.0]], None, {"ignore_index": 5},
        "class_index_out_of_range", "target holds class index 3 at [0, 1], outside [0, 2) (and not ignore_index=5).",
        {"where": "target[0][1]"},
    ),
    (
        "cross_entropy", [[1.0, 2.0]], [200.0], None, {}, "class_index_out_of_range",
        "target holds class index 200 at [0], outside [0, 2) (and not ignore_index=-100).", {"where": "target[0]"},
    ),
    (
        "entropy", [[0.5, 0.5]], None, None, {"dim": 2}, "invalid_param",
        "dim=2 is out of range for an input with 2 dimension(s).", {"param": "dim"},
    ),
    (
        "nll", [[1.0, 2.0]], [[0.5, 0.5]], None, {}, "shape_mismatch",
        "target has shape [1, 2]; class indices for input of shape [1, 2] need shape [1].", {},
    ),
    (
        "cross_entropy", [[1.0, 2.0]], [0.0, 1.0, 1.0], None, {}, "shape_mismatch",
        "target has shape [3]; class indices for input of shape [1, 2] need shape [1], "
        "or probabilities of shape [1, 2].", {},
    ),
    (
        "nll", [1.0, 2.0], [[0.0]], None, {}, "shape_mismatch",
        "target has shape [1, 1]; class indices for input of shape [2] need shape [].", {},
    ),
    (
        "nll", 1.0, [0.0], None, {}, "shape_mismatch",
        "target has shape [1]; class indices for input of shape [] need shape (none: input has no class dim).", {},
    ),
    *[
        (
            "cross_entropy", [[1.0, 2.0]], [value], None, {}, "invalid_dtype",
            "cross_entropy needs class indices in target; got non-finite or out-of-range values.",
            {"where": "target"},
        )
        for value in (float(2**62), -float(2**62), math.inf, NAN)
    ],
    (
        "nll", [[1.0, 2.0]], [0.5], None, {}, "invalid_dtype",
        "nll needs integer class indices in target, got fractional values.", {"where": "target"},
    ),
    (
        "mse", [1.0, 2.0], [1.0, 2.0, 3.0], None, {}, "shape_mismatch",
        "target of shape [3] does not broadcast with input of shape [2].", {},
    ),
    (
        "mse", [1.0, 2.0], [[1.0, 2.0]], None, {}, "shape_mismatch",
        "target of shape [1, 2] would broadcast input of shape [2] up to [1, 2]; input must keep its shape.", {},
    ),
    (
        "binary_cross_entropy", [0.5, 0.5], [1.0, 0.0], [1.0, 1.0, 1.0], {}, "shape_mismatch",
        "weight of shape [3] does not broadcast with input of shape [2].", {},
    ),
    ("mse", [1.0], [1.0], [1.0], {}, "unexpected_weight", "mse takes no weight.", {}),
    ("entropy", [0.5, 0.5], [1.0], None, {}, "unexpected_target", "entropy takes no target.", {}),
    ("mse", [1.0, 2.0], None, None, {}, "missing_target", "mse needs a target.", {}),
    (
        "cross_entropy", [[1.0, 2.0]], [0.0], [1.0], {}, "shape_mismatch",
        "weight must hold one value per class: shape [2], got [1].", {},
    ),
    (
        "cross_entropy", 1.0, 0.0, [1.0], {}, "shape_mismatch",
        "weight must hold one value per class: shape [0], got [1].", {},
    ),
    (
        "cross_entropy", 1.0, 0.0, None, {}, "shape_mismatch",
        "input must hold class scores: shape [C], [N, C] or [N, C, d1, ...].", {},
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "input", "target", "weight", "params", "error_type", "message", "details"),
    REFUSALS,
    ids=[f"{case[0]}-{case[5]}-{index}" for index, case in enumerate(REFUSALS)],
)
def test_refusals_name_the_problem(
    name: str,
    input: Any,
    target: Any,
    weight: Any,
    params: dict[str, Any],
    error_type: str,
    message: str,
    details: dict[str, Any],
) -> None:
    """Each refusal's whole error: its type, the sentence the client reads, and where it lies."""
    error = refusal(name, input, target, weight, **params)
    assert (error.error_type, error.message, error.details) == (error_type, message, details)


def test_a_grad_output_of_another_shape_is_refused() -> None:
    spec = LOSSES.get("mse")
    x, t = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([0.0, 0.0], dtype=torch.float64)
    with pytest.raises(InvalidInput) as caught:
        evaluate_loss(spec, x, t, None, {"reduction": "none"}, grad_output=torch.ones(1, dtype=torch.float64))
    assert caught.value.error_type == "shape_mismatch"
    assert caught.value.message == "grad_output has shape [1], but the loss has shape [2]."


def test_an_integer_input_is_refused() -> None:
    spec = LOSSES.get("mse")
    with pytest.raises(InvalidInput) as caught:
        evaluate_loss(spec, torch.tensor([1, 2]), torch.tensor([1.0, 2.0]), None, spec.defaults())
    assert (caught.value.error_type, caught.value.message, caught.value.details) == (
        "invalid_dtype",
        "mse needs a floating-point input, not int64.",
        {"where": "input"},
    )


def test_class_indices_just_below_the_refused_magnitude_are_checked_as_classes() -> None:
    """2**62 and beyond are refused as not class indices; below it they are indices, out of range."""
    below = math.nextafter(float(2**62), 0.0)
    spec = LOSSES.get("cross_entropy")
    logits, target = torch.ones(1, 2, dtype=torch.float64), torch.tensor([below], dtype=torch.float64)
    with pytest.raises(InvalidInput) as caught:
        evaluate_loss(spec, logits, target, None, spec.defaults())
    assert caught.value.error_type == "class_index_out_of_range"


TAKES_NO_WEIGHT = {"mse", "l1", "smooth_l1", "huber", "kl_div", "poisson_nll", "soft_margin", "entropy"}
CLASS_INDEX_TARGETS = {"cross_entropy", "nll"}


@pytest.mark.parametrize("spec", list(LOSSES), ids=lambda spec: spec.name)
def test_weights_and_class_indices_are_taken_where_torch_takes_them(spec: LossSpec) -> None:
    """Which losses take a weight and which take class indices, from torch's signatures (written
    here, not read from the registry): a weight where there is none is refused, and class indices
    are taken exactly where torch takes them."""
    input, target, _, params = make_inputs(spec, spec.samples[0])
    if spec.name in TAKES_NO_WEIGHT:
        with pytest.raises(InvalidInput) as caught:
            evaluate_loss(spec, input, target, torch.ones_like(input), params)
        assert caught.value.error_type == "unexpected_weight"
    logits = torch.randn(3, 4, dtype=torch.float64)
    indices = torch.tensor([0.0, 3.0, 1.0], dtype=torch.float64)
    if spec.name in CLASS_INDEX_TARGETS:
        result = evaluate_loss(spec, logits.log_softmax(-1), indices, None, spec.defaults())
        assert result.loss.isfinite()
    elif spec.target != "none":
        with pytest.raises(InvalidInput):
            evaluate_loss(spec, logits.sigmoid(), indices, None, spec.defaults())


def test_class_probabilities_of_one_class_are_probabilities() -> None:
    """A float target of the input's shape is class probabilities, even where its values could
    be read as indices: one class, probability 1, gives loss 0."""
    spec = LOSSES.get("cross_entropy")
    one_class = torch.tensor([[0.3]], dtype=torch.float64)
    result = evaluate_loss(spec, one_class, torch.tensor([[1.0]], dtype=torch.float64), None, spec.defaults())
    assert result.loss.item() == 0.0


def test_the_language_takes_derivatives_torch_has_and_zero_for_the_rest() -> None:
    """loss_value (the formula language's path): w.r.t. a float target, torch's derivative; w.r.t.
    a class weight beside class indices, which torch cannot differentiate, zero."""
    mse = LOSSES.get("mse")
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    t = torch.tensor([0.5, 3.0], dtype=torch.float64, requires_grad=True)
    (d_target,) = torch.autograd.grad(loss_value(mse, x, t, None, mse.defaults()), t)
    torch.testing.assert_close(d_target, -(x - t.detach()), rtol=1e-15, atol=0)  # d/dt mean((x-t)^2), n = 2
    nll = LOSSES.get("nll")
    log_probabilities = torch.randn(3, 4, dtype=torch.float64).log_softmax(-1).requires_grad_(True)
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    value = loss_value(nll, log_probabilities, torch.tensor([0.0, 3.0, 1.0]), weight, nll.defaults())
    d_input, d_weight = torch.autograd.grad(
        value, [log_probabilities, weight], allow_unused=True, materialize_grads=True
    )
    assert d_weight.tolist() == [0.0] * 4
    expected = torch.autograd.grad(
        F.nll_loss(log_probabilities, torch.tensor([0, 3, 1]), weight.detach()), log_probabilities
    )
    torch.testing.assert_close(d_input, expected[0], rtol=0, atol=0)


def test_an_unknown_loss_is_not_found_with_the_known_names() -> None:
    with pytest.raises(NotFound) as caught:
        LOSSES.get("mse_loss")
    assert caught.value.error_type == "unknown_loss"
    assert caught.value.message.startswith("There is no loss named 'mse_loss'; known: mse, l1,")
    assert caught.value.details == {"known": [spec.name for spec in LOSSES]}


@pytest.mark.parametrize(("base", "taken"), [("e", True), ("2", True), ("10", False), ("E", False)])
def test_entropy_takes_base_e_or_2(base: str, taken: bool) -> None:
    spec = LOSSES.get("entropy")
    if taken:
        assert validate_params(spec, {"base": base})["base"] == base
    else:
        with pytest.raises(RequestValidationError):
            validate_params(spec, {"base": base})


CATALOG_KINDS = {
    "mse": ("float", "none"),
    "l1": ("float", "none"),
    "smooth_l1": ("float", "none"),
    "huber": ("float", "none"),
    "cross_entropy": ("float_or_index", "class"),
    "nll": ("index", "class"),
    "binary_cross_entropy": ("float", "elementwise"),
    "binary_cross_entropy_with_logits": ("float", "elementwise"),
    "kl_div": ("float", "none"),
    "poisson_nll": ("float", "none"),
    "soft_margin": ("float", "none"),
    "entropy": ("none", "none"),
}
"""Each loss's target and weight kinds as GET /v1/losses shows them, from torch's signatures."""


def test_the_catalog_shows_each_losss_target_and_weight_kinds() -> None:
    assert {spec.name: (spec.target, spec.weight) for spec in LOSSES} == CATALOG_KINDS


def test_probabilities_at_the_ends_of_0_1_are_taken() -> None:
    spec = LOSSES.get("binary_cross_entropy")
    ends = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    targets = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    result = evaluate_loss(spec, ends, targets, None, {"reduction": "none"})
    assert result.loss.tolist() == [100.0, 100.0, -math.log(0.5)]  # torch clamps log(0) to -100


def test_poisson_nll_default_eps_is_torchs() -> None:
    """eps matters only without log_input: the registry's default must be torch's 1e-8."""
    spec = LOSSES.get("poisson_nll")
    rate = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    count = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    result = evaluate_loss(spec, rate, count, None, {**spec.defaults(), "log_input": False})
    expected = F.poisson_nll_loss(rate, count, log_input=False)
    torch.testing.assert_close(result.loss, expected, rtol=1e-15, atol=0)


def test_the_language_differentiates_a_class_weight_beside_probabilities() -> None:
    """Beside class probabilities torch differentiates cross_entropy's class weight, and
    loss_value keeps it (beside class indices it is detached: see above)."""
    spec = LOSSES.get("cross_entropy")
    logits = torch.tensor([[0.2, -1.0, 0.7], [1.5, 0.1, -0.3]], dtype=torch.float64)
    probabilities = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], dtype=torch.float64)
    weight = torch.tensor([1.5, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    (d_weight,) = torch.autograd.grad(loss_value(spec, logits, probabilities, weight, spec.defaults()), weight)
    (expected,) = torch.autograd.grad(F.cross_entropy(logits, probabilities, weight), weight)
    assert d_weight.abs().min() > 0
    torch.testing.assert_close(d_weight, expected, rtol=0, atol=0)
