"""The service's activations and losses against the hand-written references of tests/oracles.py.

For every registry sample and for parameter values chosen here (every parameter away from its
default at least once): values, VJPs, second derivatives and Jacobians equal the references' and
autograd's through them in float64; the service's defaults are the references' own; and the
service's derivatives agree with finite differences of its own values, at tolerances that bind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import pytest
import torch

from service.compute.ops.activations import ACTIVATIONS, ActivationResult, ActivationSpec, evaluate_activation
from service.compute.ops.losses import LOSSES, LossSample, LossSpec, evaluate_loss
from tests import oracles
from tests.compute.test_activations import (
    FINITE_DIFFERENCE,
    STEP,
    assert_derivative,
    oracle_second_derivative,
    oracle_vjp,
    sample_input,
)
from tests.compute.test_losses import (
    TIGHT,
    LossInputs,
    Tensors,
    call,
    check_against_the_oracle,
    check_finite_differences,
    check_gradients,
    check_oracle_gradcheck,
    make_inputs,
)


def differing_names(registered: Iterable[str], table: Iterable[str]) -> str:
    registered, table = set(registered), set(table)
    return (
        f"registered without an oracle: {sorted(registered - table)}; "
        f"oracle without a registered op: {sorted(table - registered)}"
    )


def test_activation_oracles_cover_exactly_the_registry() -> None:
    names = [spec.name for spec in ACTIVATIONS]
    assert set(names) == set(oracles.ACTIVATIONS), differing_names(names, oracles.ACTIVATIONS)


def test_loss_oracles_cover_exactly_the_registry() -> None:
    names = [spec.name for spec in LOSSES]
    assert set(names) == set(oracles.LOSSES), differing_names(names, oracles.LOSSES)


# Activations.

# Parameter values away from the defaults (and from the registry's samples).
ACTIVATION_VARIATIONS: dict[str, list[dict[str, Any]]] = {
    "leaky_relu": [{"negative_slope": 0.3}, {"negative_slope": -1.5}],
    "softplus": [{"beta": 0.5}, {"threshold": 2.0}, {"beta": 3.0, "threshold": 4.0}],
    "elu": [{"alpha": 2.5}],
    "celu": [{"alpha": 0.25}, {"alpha": 0.4}],
    "gelu": [{"approximate": "tanh"}],
    "hardtanh": [{"min_val": -2.5}, {"max_val": 0.3}, {"min_val": 0.2, "max_val": 3.0}],
    "softshrink": [{"lambd": 1.3}, {"lambd": 0.0}],
    "hardshrink": [{"lambd": 1.3}, {"lambd": 0.0}],
    "threshold": [{"threshold": 0.7}, {"value": -2.0}, {"threshold": -1.0, "value": 4.0}],
    **{name: [{"dim": 0}, {"dim": 1}, {"dim": -2}] for name in ("softmax", "log_softmax", "softmin")},
}


def wide_input(spec: ActivationSpec, seed: int) -> torch.Tensor:
    """24 values across every kink and saturation the parameters above move (none within 1e-3 of
    one); two far out, past softplus's default threshold and elu's saturation."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.cat(
        [
            3 * torch.randn(22, generator=generator, dtype=torch.float64),
            torch.tensor([21.7, -23.1], dtype=torch.float64),
        ]
    )
    return values.reshape(4, 6) if spec.elementwise else values.reshape(3, 4, 2)


@dataclass(frozen=True)
class ActivationCase:
    spec: ActivationSpec
    x: torch.Tensor
    params: dict[str, Any]
    """Every parameter, defaults included (the defaults test calls the service without them)."""


def activation_cases(samples: bool = True) -> list[Any]:
    cases = []
    for spec in ACTIVATIONS:
        for index, sample in enumerate(spec.samples if samples else ()):
            case = ActivationCase(spec, sample_input(sample), {**spec.defaults(), **sample.params})
            cases.append(pytest.param(case, id=f"{spec.name}-sample{index}"))
        for index, params in enumerate(ACTIVATION_VARIATIONS.get(spec.name, [])):
            case = ActivationCase(spec, wide_input(spec, seed=index), {**spec.defaults(), **params})
            label = ",".join(f"{key}={value}" for key, value in params.items())
            cases.append(pytest.param(case, id=f"{spec.name}-{label}"))
    return cases


ACTIVATION_CASES = activation_cases()
# test_activations.py gradchecks the references at the samples.
ACTIVATION_VARIATION_CASES = activation_cases(samples=False)


def test_every_activation_parameter_is_varied() -> None:
    """Each parameter takes a value other than its default in some case above."""
    unvaried = [
        f"{spec.name}.{param.name}"
        for spec in ACTIVATIONS
        for param in spec.params
        if all(
            variation.get(param.name, param.default) == param.default
            for variation in ACTIVATION_VARIATIONS.get(spec.name, [])
        )
    ]
    assert not unvaried, f"no case varies {unvaried}"


def evaluate(case: ActivationCase, x: torch.Tensor | None = None, **options: Any) -> ActivationResult:
    return evaluate_activation(
        case.spec, case.x if x is None else x, case.params, max_jacobian_elements=10_000, **options
    )


def oracle_of(case: ActivationCase) -> Callable[[torch.Tensor], torch.Tensor]:
    oracle = oracles.ACTIVATIONS[case.spec.name]
    return lambda t: oracle(t, **case.params)


def random_like(x: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


@pytest.mark.parametrize("case", ACTIVATION_CASES)
def test_activation_equals_its_oracle(case: ActivationCase) -> None:
    fn = oracle_of(case)
    name, params = case.spec.name, case.params
    cotangent = random_like(case.x, seed=1)
    result = evaluate(case, grad_output=cotangent, second_order=case.spec.elementwise, want_jacobian=True)
    torch.testing.assert_close(result.output, fn(case.x), **TIGHT)
    assert_derivative(result.grad, oracle_vjp(fn, case.x, cotangent), name, params, "grad")
    if case.spec.elementwise:
        assert_derivative(result.grad2, oracle_second_derivative(fn, case.x), name, params, "grad2")
    assert_derivative(result.jacobian, torch.autograd.functional.jacobian(fn, case.x), name, params, "jacobian")


@pytest.mark.parametrize("spec", list(ACTIVATIONS), ids=lambda spec: spec.name)
def test_activation_defaults_are_the_oracles(spec: ActivationSpec) -> None:
    """The service with the registry's defaults, the oracle with no parameters: the same function."""
    oracle = oracles.ACTIVATIONS[spec.name]
    x = wide_input(spec, seed=5)
    result = evaluate_activation(spec, x, spec.defaults(), max_jacobian_elements=1)
    torch.testing.assert_close(result.output, oracle(x), **TIGHT)
    assert_derivative(result.grad, oracle_vjp(oracle, x, torch.ones_like(x)), spec.name, spec.defaults(), "grad")


def finite_difference_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """d fn / dx by central differences, shaped ``fn(x).shape + x.shape``."""
    flat = x.flatten()
    columns = []
    for index in range(flat.numel()):
        step = torch.zeros_like(flat)
        step[index] = STEP
        upper, lower = fn((flat + step).reshape(x.shape)), fn((flat - step).reshape(x.shape))
        columns.append((upper - lower) / (2 * STEP))
    output_shape = columns[0].shape
    return torch.stack(columns, dim=-1).reshape(output_shape + x.shape)


@pytest.mark.parametrize("case", ACTIVATION_CASES)
def test_activation_derivatives_are_those_of_its_own_values(case: ActivationCase) -> None:
    """A gradcheck of the service itself, which builds no graph (backward kernels): its VJP and
    Jacobian against central differences of its value, its f'' against differences of its f'."""
    cotangent = random_like(case.x, seed=2)
    result = evaluate(case, grad_output=cotangent, want_jacobian=True)
    if case.spec.elementwise:  # one difference gives the whole diagonal; the rest must be zeros
        upper, lower = evaluate(case, case.x + STEP).output, evaluate(case, case.x - STEP).output
        numeric = torch.diag_embed(((upper - lower) / (2 * STEP)).flatten()).reshape(case.x.shape * 2)
    else:
        numeric = finite_difference_jacobian(lambda t: evaluate(case, t).output, case.x)
    assert result.jacobian is not None
    torch.testing.assert_close(result.jacobian, numeric, **FINITE_DIFFERENCE)
    vjp = (cotangent.reshape(-1, 1) * numeric.reshape(cotangent.numel(), -1)).sum(0).reshape(case.x.shape)
    torch.testing.assert_close(result.grad, vjp, **FINITE_DIFFERENCE)
    if case.spec.elementwise:
        grad2 = evaluate(case, second_order=True).grad2
        upper, lower = evaluate(case, case.x + STEP).grad, evaluate(case, case.x - STEP).grad
        torch.testing.assert_close(grad2, (upper - lower) / (2 * STEP), **FINITE_DIFFERENCE)


@pytest.mark.parametrize("case", ACTIVATION_VARIATION_CASES)
def test_activation_oracle_passes_gradcheck(case: ActivationCase) -> None:
    """The references' own derivatives (which the service is held to) by finite differences."""
    fn = oracle_of(case)
    x = case.x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x,), eps=STEP, **FINITE_DIFFERENCE)
    if case.spec.elementwise:
        assert torch.autograd.gradgradcheck(fn, (x,), eps=STEP, **FINITE_DIFFERENCE)


# Losses.


def set_first_target(index: int) -> Callable[[LossInputs], LossInputs]:
    """Make the first class index ``index`` (so that an ignore_index is really met)."""

    def adjust(inputs: LossInputs) -> LossInputs:
        input, target, weight, params = inputs
        assert target is not None
        target = target.clone()
        target.view(-1)[0] = index
        return input, target, weight, params

    return adjust


def scale_target(factor: float) -> Callable[[LossInputs], LossInputs]:
    def adjust(inputs: LossInputs) -> LossInputs:
        input, target, weight, params = inputs
        assert target is not None
        return input, factor * target, weight, params

    return adjust


def log_of_target(inputs: LossInputs) -> LossInputs:
    input, target, weight, params = inputs
    assert target is not None
    return input, torch.log(target), weight, params


def normalised_along_0(inputs: LossInputs) -> LossInputs:
    input, target, weight, params = inputs
    return input / input.sum(0), target, weight, params


@dataclass(frozen=True)
class LossVariation:
    sample: LossSample
    adjust: Callable[[LossInputs], LossInputs] | None = None


def class_sample(
    shape: tuple[int, ...], weighted: bool = False, log_probabilities: bool = False, **params: Any
) -> LossSample:
    """Class scores (or log-probabilities) of ``shape`` with class-index targets."""
    weight_shape = (shape[1:2] or shape) if weighted else None
    input_kind: Literal["log_probabilities", "real"] = "log_probabilities" if log_probabilities else "real"
    return LossSample(shape, "index", input_kind, weight_shape, params)


def probabilities_sample(shape: tuple[int, ...], weighted: bool = False, **params: Any) -> LossSample:
    """Class scores of ``shape`` with class-probability targets."""
    return LossSample(shape, "probabilities", weight_shape=(shape[1:2] or shape) if weighted else None, params=params)


# Parameter values away from the defaults and from the registry's samples, with the inputs they
# need (an ignore_index that some target meets, Poisson targets above 1 for Stirling's term, ...).
LOSS_VARIATIONS: dict[str, list[LossVariation]] = {
    "mse": [LossVariation(LossSample(params={"reduction": "sum"}))],
    "l1": [LossVariation(LossSample(params={"reduction": "none"}))],
    "smooth_l1": [
        LossVariation(LossSample(params={"beta": 0.3})),
        LossVariation(LossSample(params={"beta": 2.5, "reduction": "sum"})),
        LossVariation(LossSample(params={"beta": 0.0})),
    ],
    "huber": [
        LossVariation(LossSample(params={"delta": 0.4, "reduction": "none"})),
        LossVariation(LossSample(params={"delta": 3.0, "reduction": "sum"})),
    ],
    "cross_entropy": [
        LossVariation(class_sample((3, 4), weighted=True, ignore_index=2), set_first_target(2)),
        LossVariation(class_sample((3, 4), weighted=True, label_smoothing=0.3), set_first_target(-100)),
        LossVariation(class_sample((3, 4), ignore_index=1, label_smoothing=0.25, reduction="sum"), set_first_target(1)),
        LossVariation(
            class_sample((2, 3, 2), weighted=True, ignore_index=0, label_smoothing=0.2, reduction="none"),
            set_first_target(0),
        ),
        LossVariation(class_sample((5,), weighted=True, label_smoothing=0.6)),
        LossVariation(probabilities_sample((3, 4), weighted=True, label_smoothing=0.2, reduction="sum")),
        LossVariation(probabilities_sample((2, 3, 2), weighted=True, label_smoothing=0.4)),
        LossVariation(probabilities_sample((2, 3, 2), reduction="none")),
        LossVariation(probabilities_sample((4,), label_smoothing=0.1)),
    ],
    "nll": [
        LossVariation(class_sample((3, 4), weighted=True, log_probabilities=True, ignore_index=3), set_first_target(3)),
        LossVariation(class_sample((3, 4), log_probabilities=True, reduction="none"), set_first_target(-100)),
        LossVariation(class_sample((2, 3, 2), weighted=True, log_probabilities=True), set_first_target(-100)),
        LossVariation(class_sample((5,), weighted=True, log_probabilities=True, reduction="sum")),
    ],
    "binary_cross_entropy": [
        LossVariation(LossSample(input_kind="unit", target="unit", weight_shape=(3, 4))),
        LossVariation(LossSample(input_kind="unit", target="unit", params={"reduction": "sum"})),
    ],
    "binary_cross_entropy_with_logits": [
        LossVariation(LossSample(target="unit", params={"pos_weight": 2.5, "reduction": "sum"})),
        LossVariation(
            LossSample(
                target="unit", weight_shape=(4,), params={"pos_weight": [0.5, 1.5, 4.0, 0.25], "reduction": "none"}
            )
        ),
    ],
    "kl_div": [
        *(
            LossVariation(LossSample(input_kind="log_probabilities", target="probabilities", params=params), adjust)
            for reduction in ("batchmean", "mean", "sum", "none")
            for params, adjust in (
                ({"reduction": reduction}, None),
                ({"reduction": reduction, "log_target": True}, log_of_target),
            )
        ),
        LossVariation(LossSample((5,), input_kind="log_probabilities", target="probabilities")),
    ],
    "poisson_nll": [
        LossVariation(LossSample(target="unit", params={"full": True}), scale_target(4.0)),
        LossVariation(LossSample(input_kind="unit", target="unit", params={"log_input": False, "eps": 0.1})),
        LossVariation(
            LossSample(
                input_kind="unit", target="unit", params={"log_input": False, "full": True, "reduction": "none"}
            ),
            scale_target(5.0),
        ),
        LossVariation(LossSample(target="unit", params={"reduction": "sum"})),
    ],
    "soft_margin": [LossVariation(LossSample(target="sign", params={"reduction": "sum"}))],
    "entropy": [
        LossVariation(LossSample((2, 3, 4), "none", "probabilities", params={"reduction": "sum"})),
        LossVariation(LossSample((2, 3, 4), "none", "probabilities", params={"dim": 2, "base": "2"})),
        LossVariation(
            LossSample((4, 3), "none", "probabilities", params={"dim": 0, "base": "2", "reduction": "none"}),
            normalised_along_0,
        ),
    ],
}


def loss_cases(samples: bool = True) -> list[Any]:
    cases = []
    for spec in LOSSES:
        for index, sample in enumerate(spec.samples if samples else ()):
            cases.append(pytest.param(spec, make_inputs(spec, sample), id=f"{spec.name}-sample{index}"))
        for index, variation in enumerate(LOSS_VARIATIONS.get(spec.name, [])):
            inputs = make_inputs(spec, variation.sample, seed=index + 1)
            if variation.adjust is not None:
                inputs = variation.adjust(inputs)
            label = ",".join(f"{key}={value}" for key, value in variation.sample.params.items())
            cases.append(pytest.param(spec, inputs, id=f"{spec.name}-{index}-{label}"))
    return cases


LOSS_CASES = loss_cases()
# test_losses.py runs the same finite-difference checks at the samples.
LOSS_VARIATION_CASES = loss_cases(samples=False)


def test_every_loss_parameter_is_varied() -> None:
    """Each parameter takes a value other than its default in some case above."""
    unvaried = [
        f"{spec.name}.{param.name}"
        for spec in LOSSES
        for param in spec.params
        if all(
            variation.sample.params.get(param.name, param.default) == param.default
            for variation in LOSS_VARIATIONS.get(spec.name, [])
        )
    ]
    assert not unvaried, f"no case varies {unvaried}"


@pytest.mark.parametrize(("spec", "inputs"), LOSS_CASES)
def test_loss_equals_its_oracle(spec: LossSpec, inputs: LossInputs) -> None:
    """Loss and gradients (w.r.t. input, target and weight, where the service gives them) against
    the oracle and autograd through it, in float64."""
    check_against_the_oracle(spec, inputs)


@pytest.mark.parametrize("spec", list(LOSSES), ids=lambda spec: spec.name)
def test_loss_defaults_are_the_oracles(spec: LossSpec) -> None:
    """The service with the registry's defaults, the oracle with no parameters: the same loss."""
    sample = spec.samples[0]  # the first sample's inputs suit the defaults (later ones may not)
    assert not any(param.tensor for param in spec.params if param.name in sample.params)
    input, target, weight, _ = make_inputs(spec, sample)
    tensors: Tensors = {"input": input, "target": target, "weight": weight}
    expected = call(oracles.LOSSES[spec.name], tensors, {})
    result = evaluate_loss(spec, input, target, weight, spec.defaults())
    torch.testing.assert_close(result.loss, expected, **TIGHT)
    check_gradients(spec, tensors, {}, torch.ones_like(expected), result.grads, TIGHT)


@pytest.mark.parametrize(("spec", "inputs"), LOSS_VARIATION_CASES)
def test_loss_gradients_are_those_of_its_own_values(spec: LossSpec, inputs: LossInputs) -> None:
    check_finite_differences(spec, inputs)


@pytest.mark.parametrize(("spec", "inputs"), LOSS_VARIATION_CASES)
def test_loss_oracle_passes_gradcheck(spec: LossSpec, inputs: LossInputs) -> None:
    check_oracle_gradcheck(spec, inputs)
