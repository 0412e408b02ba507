"""One rule for every parameter, generated from the registries and checked against torch itself:
what torch refuses is a validation error naming the parameter, before anything runs; what torch
takes is taken (and computed as torch computes it: tests/compute/test_oracles.py), except where
EXCEPTIONS says why not.

Each activation and loss parameter is probed at, just inside and just outside each end of its
range (``Param.bounds``), and beyond: negatives, zero, tiny, huge and non-finite values; a choice
with each choice and torch's other spellings; the parameters of an entry with rules in every
combination. torch takes a value when the registered function computes with it, value and
gradient, for float32 and float64 inputs alike.
"""

from __future__ import annotations

import functools
import itertools
import math
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from fastapi.exceptions import RequestValidationError

from service.api.endpoints import validate_params
from service.compute.ops.activations import ACTIVATIONS, ActivationSpec, evaluate_activation
from service.compute.ops.losses import LOSSES, LossSpec, evaluate_loss
from service.compute.ops.registry import FLOAT32_MAX, INT64, Param, ParamsSpec
from service.compute.optimisation.optimizers import OPTIMIZERS
from service.errors import InvalidInput
from tests.compute.test_losses import make_inputs

Spec = ActivationSpec | LossSpec


def least_celu_alpha() -> float:
    """The least alpha above 1e-300 that torch's celu takes for a float32 input, value and
    gradient (it divides by alpha): found by bisection on the bits of the doubles between."""
    x = torch.ones(1, requires_grad=True)

    def takes(bits: int) -> bool:
        try:
            torch.nn.functional.celu(x, struct.unpack("<d", struct.pack("<q", bits))[0]).backward()
        except RuntimeError:
            return False
        return True

    low, high = (struct.unpack("<q", struct.pack("<d", value))[0] for value in (1e-300, 1.0))
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if takes(middle) else (middle, high)
    return float(struct.unpack("<d", struct.pack("<q", high))[0])


TINY = least_celu_alpha()
MAGNITUDES = (5e-324, 1e-300, math.nextafter(TINY, 0.0), TINY, 0.5, 1.0, 2.0, 1e300, math.inf)
FLOATS = [0.0, -0.0, math.nan, *(sign * value for sign in (-1.0, 1.0) for value in MAGNITUDES)]
INTS = [INT64[0] - 1, INT64[0], -100, -1, 0, 1, 2, 3, INT64[1], INT64[1] + 1]
STRINGS = sorted(
    {choice for spec in [*ACTIVATIONS, *LOSSES] for param in spec.params for choice in param.choices or ()}
    | {"elementwise_mean", "erf", "Mean", "", "10"}
)
TORCH_ERRORS = (RuntimeError, ValueError, IndexError, OverflowError, TypeError, KeyError)
"""What torch raises about its arguments (KeyError: entropy's own reduction table)."""


def bound_probes(param: Param) -> Iterator[float]:
    """Each end of the range, and its neighbours either side."""
    integer = param.python_type is int
    for end in param.bounds().values():
        yield end
        yield from (end - 1, end + 1) if integer else (math.nextafter(end, -math.inf), math.nextafter(end, math.inf))


def values(param: Param) -> list[Any]:
    if param.choices:
        return STRINGS
    if param.python_type is int:
        return sorted({*INTS, *bound_probes(param)})
    return [*FLOATS, *bound_probes(param)]


def probed(spec: Spec) -> list[Param]:
    return [param for param in spec.params if not param.tensor and param.python_type is not bool]


def probes(spec: Spec) -> Iterator[dict[str, Any]]:
    """Each parameter's values, the others at their defaults; with rules, every combination."""
    params = probed(spec)
    if spec.rules:
        names = [param.name for param in params]
        yield from (
            dict(zip(names, combination, strict=True)) for combination in itertools.product(*map(values, params))
        )
    else:
        yield from ({param.name: value} for param in params for value in values(param))


def service_accepts(spec: ParamsSpec, given: dict[str, Any]) -> bool:
    """Whether request validation takes ``given``; a refusal must name one of its parameters."""
    try:
        validate_params(spec, given)
    except RequestValidationError as exc:
        errors = exc.errors()
    else:
        return True
    assert all(error["loc"][:2] == ("body", "params") and error["loc"][2] in given for error in errors), errors
    return False


def calls(
    spec: Spec, given: dict[str, Any], dtype: torch.dtype
) -> tuple[Callable[[], torch.Tensor], Callable[[], Any]]:
    """The registered torch function at sample inputs, and the service's evaluation there."""
    params = {**spec.defaults(), **given}
    if isinstance(spec, ActivationSpec):
        x = torch.linspace(-2.0, 2.0, 6, dtype=dtype).reshape(2, 3).requires_grad_(True)
        return (
            functools.partial(spec.fn, x, **params),
            functools.partial(evaluate_activation, spec, x.detach(), params, max_jacobian_elements=1),
        )
    input, target, _, _ = make_inputs(spec, spec.samples[0])
    input = input.to(dtype).requires_grad_(True)
    if target is not None and target.is_floating_point():
        target = target.to(dtype)
    return (
        functools.partial(spec.fn, input, target, None, **params),
        functools.partial(evaluate_loss, spec, input.detach(), target, None, params),
    )


def torch_accepts(spec: Spec, given: dict[str, Any]) -> bool:
    for dtype in (torch.float32, torch.float64):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # elementwise_mean's deprecation
                torch_fn, _ = calls(spec, given, dtype)
                torch_fn().sum().backward()
        except TORCH_ERRORS:
            return False
    return True


def beyond_float32(value: Any) -> bool:
    return isinstance(value, float) and not abs(value) <= FLOAT32_MAX


def refused_with_the_input(spec: Spec, given: dict[str, Any]) -> bool:
    """The service refuses ``given`` once it sees the input: a 400 invalid_param naming it."""
    _, service = calls(spec, given, torch.float64)
    try:
        service()
    except InvalidInput as exc:
        return exc.error_type == "invalid_param" and exc.details.get("param") in given
    return False


@dataclass(frozen=True)
class Difference:
    """Where the service's acceptance differs from torch's, and why."""

    reason: str
    applies: Callable[[Spec, dict[str, Any]], bool]
    service_accepts: bool
    """True: validation takes what torch refuses (the service must refuse it with the input)."""


EXCEPTIONS = [
    Difference(
        "No JSON number is NaN or infinite, so no request carries one; the bounds refuse them.",
        lambda spec, given: any(isinstance(v, float) and not math.isfinite(v) for v in given.values()),
        service_accepts=False,
    ),
    Difference(
        "One range for every float parameter and dtype: float32's, beyond which torch refuses an "
        "activation's parameters for float32 inputs (a float64 input, or a loss, takes more).",
        lambda spec, given: any(beyond_float32(v) for v in given.values()),
        service_accepts=False,
    ),
    Difference(
        "torch's float32 celu takes an alpha whose reciprocal is infinite even in float64 (a "
        "subnormal one); the rule refuses it with every alpha whose reciprocal is beyond float32.",
        lambda spec, given: spec.name == "celu" and given["alpha"] != 0 and math.isinf(1 / given["alpha"]),
        service_accepts=False,
    ),
    Difference(
        "torch's deprecated alias of mean (it warns): not in the contract.",
        lambda spec, given: given.get("reduction") == "elementwise_mean",
        service_accepts=False,
    ),
    Difference(
        "entropy is the service's own function: base chooses its units, not a torch argument.",
        lambda spec, given: spec.name == "entropy" and "base" in given,
        service_accepts=False,
    ),
    Difference(
        "A dimension's range is the input's rank: checked with the input (400 invalid_param "
        "naming dim; tested here), not before.",
        lambda spec, given: "dim" in given and INT64[0] <= given["dim"] <= INT64[1],
        service_accepts=True,
    ),
]


@dataclass(frozen=True)
class Outcome:
    spec: Spec
    given: dict[str, Any]
    service: bool
    torch: bool


@functools.cache
def outcomes(spec: Spec) -> tuple[Outcome, ...]:
    return tuple(
        Outcome(spec, given, service_accepts(spec, given), torch_accepts(spec, given)) for given in probes(spec)
    )


SPECS: list[Spec] = [spec for spec in [*ACTIVATIONS, *LOSSES] if probed(spec)]


def explained(outcome: Outcome) -> Difference | None:
    return next(
        (
            exception
            for exception in EXCEPTIONS
            if exception.service_accepts == outcome.service and exception.applies(outcome.spec, outcome.given)
        ),
        None,
    )


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_the_service_takes_what_torch_takes(spec: Spec) -> None:
    """Validation takes a probe exactly when torch computes with it, or an exception says why not."""
    unexplained = []
    for outcome in outcomes(spec):
        if outcome.service == outcome.torch:
            continue
        exception = explained(outcome)
        if exception is None:
            unexplained.append((outcome.given, f"service {outcome.service}, torch {outcome.torch}"))
        elif exception.service_accepts:
            assert refused_with_the_input(outcome.spec, outcome.given), outcome.given
    assert not unexplained, unexplained


def test_every_exception_is_needed() -> None:
    used = {explained(outcome) for spec in SPECS for outcome in outcomes(spec) if outcome.service != outcome.torch}
    assert [exception.reason for exception in EXCEPTIONS if exception not in used] == []


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_the_probes_meet_both_answers_and_the_defaults_pass(spec: Spec) -> None:
    """Each probed parameter is both taken and refused somewhere (the probes reach its bounds)."""
    for param in probed(spec):
        answers = {outcome.service for outcome in outcomes(spec) if param.name in outcome.given}
        assert answers == {True, False}, param.name
    assert service_accepts(spec, {param.name: param.default for param in spec.params})
    assert all(rule.holds(spec.defaults()) for rule in spec.rules)


def test_a_rule_failure_is_a_validation_error_naming_its_parameter() -> None:
    with pytest.raises(RequestValidationError) as caught:
        validate_params(ACTIVATIONS.get("hardtanh"), {"min_val": 1.0, "max_val": 0.5})
    assert caught.value.errors() == [
        {
            "type": "param_rule",
            "loc": ("body", "params", "min_val"),
            "msg": "min_val must not exceed max_val",
            "input": 1.0,
        }
    ]


NESTEROV = [
    {"nesterov": nesterov, "momentum": momentum, "dampening": dampening}
    for nesterov in (False, True)
    for momentum in (0.0, 5e-324, 0.9, FLOAT32_MAX)
    for dampening in (0.0, 5e-324, 0.1, 1.0)
]


@pytest.mark.parametrize("given", NESTEROV, ids=str)
def test_nesterov_is_taken_exactly_where_torchs_sgd_takes_it(given: dict[str, Any]) -> None:
    """torch's SGD raises ValueError for nesterov without momentum > 0 and dampening 0."""
    try:
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], **given)
    except ValueError:
        torch_takes = False
    else:
        torch_takes = True
    assert service_accepts(OPTIMIZERS.get("sgd"), given) == torch_takes


@pytest.mark.parametrize("spec", list(OPTIMIZERS), ids=lambda spec: spec.name)
def test_optimizer_numbers_lie_within_float32s_range(spec: Any) -> None:
    """Beyond it torch's float32 steps refuse lr (torch.optim.SGD, for one): a 422, not a failed run."""
    for param in spec.params:
        if param.python_type is float:
            assert not service_accepts(spec, {param.name: math.nextafter(FLOAT32_MAX, math.inf)}), param.name
    parameter = torch.ones(2, requires_grad=True)
    parameter.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match="overflow"):
        torch.optim.SGD([parameter], lr=math.nextafter(FLOAT32_MAX, math.inf)).step()
