"""Every registered loss, generated from the registry: values and gradients against
torch.nn.functional in float64, gradients by finite differences, and the seed's identities."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from service.compute.losses import LOSSES, LossSample, LossSpec, evaluate_loss, index_target_shape
from service.errors import InvalidInput

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

# Independent references, called exactly as a torch user would.
Reference = Callable[..., torch.Tensor]
REFERENCES: dict[str, Reference] = {
    "mse": lambda i, t, w, **p: F.mse_loss(i, t, **p),
    "l1": lambda i, t, w, **p: F.l1_loss(i, t, **p),
    "smooth_l1": lambda i, t, w, **p: F.smooth_l1_loss(i, t, **p),
    "huber": lambda i, t, w, **p: F.huber_loss(i, t, **p),
    "cross_entropy": lambda i, t, w, **p: F.cross_entropy(i, t, weight=w, **p),
    "nll": lambda i, t, w, **p: F.nll_loss(i, t, weight=w, **p),
    "binary_cross_entropy": lambda i, t, w, **p: F.binary_cross_entropy(i, t, weight=w, **p),
    "binary_cross_entropy_with_logits": lambda i, t, w, **p: F.binary_cross_entropy_with_logits(i, t, weight=w, **p),
    "kl_div": lambda i, t, w, **p: _quiet(F.kl_div, i, t, **p),
    "poisson_nll": lambda i, t, w, **p: F.poisson_nll_loss(i, t, **p),
    "soft_margin": lambda i, t, w, **p: F.soft_margin_loss(i, t, **p),
    "entropy": lambda i, t, w, base, dim, reduction: _reference_entropy(i, base, dim, reduction),
}


def _quiet(fn: Reference, *args: Any, **kwargs: Any) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # kl_div's advice about reduction="mean"
        return fn(*args, **kwargs)


def _reference_entropy(p: torch.Tensor, base: str, dim: int, reduction: str) -> torch.Tensor:
    log = torch.log2 if base == "2" else torch.log
    per_distribution = -(p * log(p)).sum(dim=dim)
    reduced = {"none": per_distribution, "sum": per_distribution.sum(), "mean": per_distribution.mean()}
    return reduced[reduction]


# entropy has no torch.nn.functional twin: it matches the seed's formula to float64 rounding.
NOT_BITWISE = {"entropy"}


CASES = [
    pytest.param(spec, sample, id=f"{spec.name}-{index}")
    for spec in LOSSES
    for index, sample in enumerate(spec.samples)
]


def make_inputs(
    spec: LossSpec, sample: LossSample, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, dict[str, Any]]:
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
    assert sorted(REFERENCES) == sorted(spec.name for spec in LOSSES)


def torch_gradient(
    reference: Reference, leaves: dict[str, torch.Tensor | None], name: str, params: dict[str, Any]
) -> torch.Tensor | None:
    """torch's own gradient of the reference w.r.t. ``name``, or None where torch refuses to."""
    try:
        value = reference(leaves["input"], leaves["target"], leaves["weight"], **params)
        leaf = leaves[name]
        assert leaf is not None
        (grad,) = torch.autograd.grad(value, leaf, torch.ones_like(value))
    except RuntimeError as error:
        if "not differentiable" not in str(error):
            raise
        return None
    return grad


@pytest.mark.parametrize(("spec", "sample"), CASES)
def test_loss_and_gradients_equal_torch(spec: LossSpec, sample: LossSample) -> None:
    input, target, weight, params = make_inputs(spec, sample)
    result = evaluate_loss(spec, input, target, weight, params)
    reference = REFERENCES[spec.name]
    expected = reference(input, target, weight, **params)
    if spec.name in NOT_BITWISE:
        torch.testing.assert_close(result.loss, expected, rtol=1e-14, atol=1e-14)
    else:
        assert torch.equal(result.loss, expected)
    tensors = {"input": input, "target": target, "weight": weight}
    for name, tensor in tensors.items():
        ours = result.grads[name]  # type: ignore[index]
        if tensor is None or not tensor.is_floating_point():
            assert ours is None, name
            continue
        leaves = {
            key: (value.clone().requires_grad_(key == name) if value is not None else None)
            for key, value in tensors.items()
        }
        torch_grad = torch_gradient(reference, leaves, name, params)
        if torch_grad is None:
            assert ours is None, f"torch cannot differentiate {name}, but we returned a gradient"
            continue
        assert ours is not None, f"torch differentiates {name}, but we returned null"
        if spec.name in NOT_BITWISE:
            torch.testing.assert_close(ours, torch_grad, rtol=1e-12, atol=1e-12)
        else:
            assert torch.equal(ours, torch_grad), name


@pytest.mark.parametrize(("spec", "sample"), CASES)
def test_gradients_match_finite_differences(spec: LossSpec, sample: LossSample) -> None:
    """gradcheck of the registered function w.r.t. every tensor we return a gradient for
    (the test above pins those gradients to torch's analytic ones)."""
    input, target, weight, params = make_inputs(spec, sample)
    result = evaluate_loss(spec, input, target, weight, params)
    tensors: dict[str, torch.Tensor | None] = {"input": input, "target": target, "weight": weight}
    names = [name for name, grad in result.grads.items() if grad is not None]

    def fn(*values: torch.Tensor) -> torch.Tensor:
        given: dict[str, torch.Tensor | None] = {**tensors, **dict(zip(names, values, strict=True))}
        return spec.fn(given["input"], given["target"], given["weight"], **params)

    leaves = []
    for name in names:
        tensor = tensors[name]
        assert tensor is not None
        leaves.append(tensor.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(fn, tuple(leaves))


def test_seed_cross_entropy_is_nll_of_log_softmax() -> None:
    """The seed: F.cross_entropy(logits, [3]) == F.nll_loss(log(softmax(logits)), [3])."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(1, 784, generator=generator, dtype=torch.float64)
    w = torch.randn(10, 784, generator=generator, dtype=torch.float64)
    logits = x @ w.t()
    target = torch.tensor([3])
    cross = evaluate_loss(LOSSES.get("cross_entropy"), logits, target, None, LOSSES.get("cross_entropy").defaults())
    log_probabilities = torch.log(F.softmax(logits, dim=1))
    nll = evaluate_loss(LOSSES.get("nll"), log_probabilities, target, None, LOSSES.get("nll").defaults())
    torch.testing.assert_close(cross.loss, nll.loss)
    assert cross.grads["input"] is not None
    torch.testing.assert_close(cross.grads["input"], F.softmax(logits, dim=1) - F.one_hot(target, 10))


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


def bad(spec_name: str, input: Any, target: Any = None, weight: Any = None, **params: Any) -> str:
    spec = LOSSES.get(spec_name)

    def as_tensor(value: Any) -> torch.Tensor | None:
        return None if value is None else torch.tensor(value, dtype=torch.float64)

    x = torch.tensor(input, dtype=torch.float64)
    with pytest.raises(InvalidInput) as caught:
        evaluate_loss(spec, x, as_tensor(target), as_tensor(weight), {**spec.defaults(), **params})
    return caught.value.error_type


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
    torch.testing.assert_close(result.loss, F.cross_entropy(logits[:1], torch.tensor([1])))
