"""Activation functions, each one registry entry around torch.nn.functional."""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from service.compute.autodiff import (
    check_jacobian_size,
    elementwise_second_derivative,
    jacobian,
    value_and_jvp,
    value_and_vjp,
)
from service.compute.ops.registry import FLOAT32_MAX, Param, ParamValue, Registry, Rule, defaults
from service.compute.runtime import torch_errors
from service.errors import InvalidInput


@dataclass(frozen=True)
class ActivationSample:
    """Inputs the generated tests feed an activation: a tensor shape (or exact values) and params."""

    shape: tuple[int, ...] = (2, 3)
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    values: tuple[float, ...] | None = None


@dataclass(frozen=True, eq=False)
class ActivationSpec:
    """A registered activation: ``fn(input, **params)`` in torch, documented and testable."""

    # eq=False: an entry is hashed by identity, so per-op caches can key on it.

    name: str
    fn: Callable[..., torch.Tensor]
    formula: str
    params: tuple[Param, ...] = ()
    elementwise: bool = True
    piecewise_linear: bool = False
    """f'' is zero wherever it exists (used where torch has no double backward, e.g. hardsigmoid)."""
    samples: tuple[ActivationSample, ...] = (ActivationSample(),)
    rules: tuple[Rule, ...] = ()
    check: Callable[[torch.Tensor, Mapping[str, Any]], None] | None = None
    """Extra validation of the input against the params (raises InvalidInput)."""
    backward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Mapping[str, Any]], torch.Tensor] | None = None
    """``backward(grad_output, input, output, params)``: the VJP by the very kernel autograd
    would call, without building a graph (a tenth of the cost on small tensors)."""

    def defaults(self) -> dict[str, ParamValue | None]:
        return defaults(self.params)

    def __call__(self, tensor: torch.Tensor, **params: Any) -> torch.Tensor:
        return self.fn(tensor, **params)


ACTIVATIONS: Registry[ActivationSpec] = Registry("activation")

aten = torch.ops.aten
# torch's SELU constants, as torch.selu passes them to elu_backward.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
DIM = Param("dim", -1, "Dimension along which the normalisation runs.")


def check_dim(tensor: torch.Tensor, params: Mapping[str, Any]) -> None:
    """The ``dim`` parameter must name an existing dimension (a 0-d tensor has dims -1 and 0)."""
    dim, rank = params["dim"], max(tensor.dim(), 1)
    if not -rank <= dim < rank:
        raise InvalidInput(
            f"dim={dim} is out of range for an input with {tensor.dim()} dimension(s) "
            f"(expected {-rank} <= dim < {rank}).",
            error_type="invalid_param",
            param="dim",
        )


# torch's hardtanh raises ValueError where min_val > max_val (NaN passes, as in torch).
HARDTANH_ORDER = Rule("min_val", "min_val must not exceed max_val", lambda p: not p["min_val"] > p["max_val"])


def _float32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


# torch's celu divides by alpha (its backward by alpha rounded to float32), and a float32 input
# refuses a 1 / alpha beyond float32's range.
CELU_ALPHA = Rule(
    "alpha",
    "alpha must not be 0, nor so close to it that 1 / alpha exceeds float32's range",
    lambda p: all(a != 0 and abs(1 / a) <= FLOAT32_MAX for a in (p["alpha"], _float32(p["alpha"]))),
)


def _activation(name: str, fn: Any, formula: str, *params: Param, elementwise: bool = True, **extra: Any) -> None:
    samples = extra.pop("samples", None) or (ActivationSample(shape=(2, 3)), ActivationSample(shape=()))
    ACTIVATIONS.register(
        ActivationSpec(
            name=name,
            fn=fn,
            formula=formula,
            params=params,
            elementwise=elementwise,
            samples=samples,
            **extra,
        )
    )


_activation("sigmoid", torch.sigmoid, "1 / (1 + exp(-x))", backward=lambda g, x, y, p: aten.sigmoid_backward(g, y))
_activation(
    "tanh",
    torch.tanh,
    "(exp(x) - exp(-x)) / (exp(x) + exp(-x)) = 2 sigmoid(2x) - 1",
    backward=lambda g, x, y, p: aten.tanh_backward(g, y),
)
_activation(
    "relu",
    F.relu,
    "max(0, x)",
    piecewise_linear=True,
    backward=lambda g, x, y, p: aten.threshold_backward(g, y, 0),
)
_activation(
    "leaky_relu",
    F.leaky_relu,
    "x if x >= 0 else negative_slope * x",
    Param("negative_slope", 0.01, "Slope for negative inputs."),
    piecewise_linear=True,
    backward=lambda g, x, y, p: aten.leaky_relu_backward(g, x, p["negative_slope"], False),
    samples=(ActivationSample(), ActivationSample(params={"negative_slope": 0.2})),
)
_activation(
    "selu",
    F.selu,
    "scale * (max(0, x) + min(0, alpha * (exp(x) - 1))), alpha = 1.6733, scale = 1.0507",
    backward=lambda g, x, y, p: aten.elu_backward(g, SELU_ALPHA, SELU_SCALE, 1.0, False, x),
)
_activation(
    "softplus",
    F.softplus,
    "log(1 + exp(beta * x)) / beta, or x where beta * x > threshold",
    Param("beta", 1.0, "Sharpness of the curve; a negative one mirrors it, 0 gives inf (as in torch)."),
    Param("threshold", 20.0, "Above beta * x > threshold the function is linear."),
    samples=(
        ActivationSample(),
        ActivationSample(params={"beta": 2.0, "threshold": 1.0}),
        ActivationSample(params={"beta": -1.5}),
    ),
    backward=lambda g, x, y, p: aten.softplus_backward(g, x, p["beta"], p["threshold"]),
)
_activation(
    "elu",
    F.elu,
    "x if x > 0 else alpha * (exp(x) - 1)",
    Param("alpha", 1.0, "Value the negative side saturates to, negated."),
    samples=(ActivationSample(), ActivationSample(params={"alpha": 0.5})),
    backward=lambda g, x, y, p: aten.elu_backward(g, p["alpha"], 1.0, 1.0, False, x),
)
_activation(
    "celu",
    F.celu,
    "max(0, x) + min(0, alpha * (exp(x / alpha) - 1))",
    Param(
        "alpha", 1.0, "Scale of the negative side; not 0, and 1 / alpha within float32's range (torch divides by it)."
    ),
    samples=(ActivationSample(), ActivationSample(params={"alpha": 2.0}), ActivationSample(params={"alpha": -1.5})),
    rules=(CELU_ALPHA,),
    backward=lambda g, x, y, p: aten.elu_backward(g, p["alpha"], 1.0, 1.0 / p["alpha"], False, x),
)
_activation(
    "gelu",
    F.gelu,
    "x * Phi(x) (Phi the standard normal CDF); tanh approximation on request",
    Param("approximate", "none", "Exact erf form or the tanh approximation.", choices=("none", "tanh")),
    samples=(ActivationSample(), ActivationSample(params={"approximate": "tanh"})),
    backward=lambda g, x, y, p: aten.gelu_backward(g, x, approximate=p["approximate"]),
)
_activation("silu", F.silu, "x * sigmoid(x)", backward=lambda g, x, y, p: aten.silu_backward(g, x))
_activation("mish", F.mish, "x * tanh(softplus(x))", backward=lambda g, x, y, p: aten.mish_backward(g, x))
_activation(
    "hardtanh",
    F.hardtanh,
    "clamp(x, min_val, max_val)",
    Param("min_val", -1.0, "Lower bound; at most max_val."),
    Param("max_val", 1.0, "Upper bound."),
    piecewise_linear=True,
    samples=(ActivationSample(), ActivationSample(params={"min_val": -0.5, "max_val": 2.0})),
    rules=(HARDTANH_ORDER,),
    check=lambda x, p: HARDTANH_ORDER.enforce(p),
    backward=lambda g, x, y, p: aten.hardtanh_backward(g, x, p["min_val"], p["max_val"]),
)
_activation(
    "hardsigmoid",
    F.hardsigmoid,
    "clamp(x / 6 + 1 / 2, 0, 1)",
    piecewise_linear=True,
    backward=lambda g, x, y, p: aten.hardsigmoid_backward(g, x),
)
_activation(
    "hardswish", F.hardswish, "x * clamp(x + 3, 0, 6) / 6", backward=lambda g, x, y, p: aten.hardswish_backward(g, x)
)
_activation(
    "relu6",
    F.relu6,
    "min(max(0, x), 6)",
    piecewise_linear=True,
    backward=lambda g, x, y, p: aten.hardtanh_backward(g, x, 0.0, 6.0),
)
_activation("softsign", F.softsign, "x / (1 + |x|)")
_activation("logsigmoid", F.logsigmoid, "log(1 / (1 + exp(-x)))")
_activation("tanhshrink", F.tanhshrink, "x - tanh(x)")
_activation(
    "softshrink",
    F.softshrink,
    "x - lambd if x > lambd, x + lambd if x < -lambd, else 0",
    Param("lambd", 0.5, "Half-width of the zero band.", ge=0.0),
    backward=lambda g, x, y, p: aten.softshrink_backward(g, x, p["lambd"]),
)
_activation(
    "hardshrink",
    F.hardshrink,
    "x if |x| > lambd else 0",
    Param("lambd", 0.5, "Half-width of the zero band; a negative one makes none (as in torch)."),
    piecewise_linear=True,
    samples=(ActivationSample(), ActivationSample(shape=()), ActivationSample(params={"lambd": -0.5})),
    backward=lambda g, x, y, p: aten.hardshrink_backward(g, x, p["lambd"]),
)
_activation(
    "threshold",
    F.threshold,
    "x if x > threshold else value",
    Param("threshold", 0.0, "Inputs at or below it are replaced."),
    Param("value", 0.0, "The replacement."),
    piecewise_linear=True,
    backward=lambda g, x, y, p: aten.threshold_backward(g, x, p["threshold"]),
)
for _name, _fn, _formula, _backward in (
    (
        "softmax",
        F.softmax,
        "exp(x_i) / sum_j exp(x_j) along dim",
        lambda g, x, y, p: aten._softmax_backward_data(g, y, p["dim"], x.dtype),
    ),
    (
        "log_softmax",
        F.log_softmax,
        "x_i - log(sum_j exp(x_j)) along dim",
        lambda g, x, y, p: aten._log_softmax_backward_data(g, y, p["dim"], x.dtype),
    ),
    ("softmin", F.softmin, "exp(-x_i) / sum_j exp(-x_j) along dim", None),
):
    _activation(
        _name,
        _fn,
        _formula,
        DIM,
        elementwise=False,
        samples=(
            ActivationSample(shape=(3,)),
            ActivationSample(shape=(2, 4), params={"dim": 0}),
            ActivationSample(shape=()),
        ),
        check=check_dim,
        backward=_backward,
    )


class ActivationResult(NamedTuple):
    output: torch.Tensor
    grad: torch.Tensor
    grad2: torch.Tensor | None
    jacobian: torch.Tensor | None
    jvp: torch.Tensor | None = None


def evaluate_activation(
    spec: ActivationSpec,
    x: torch.Tensor,
    params: Mapping[str, Any],
    *,
    grad_output: torch.Tensor | None = None,
    second_order: bool = False,
    want_jacobian: bool = False,
    tangent: torch.Tensor | None = None,
    max_jacobian_elements: int,
) -> ActivationResult:
    """The activation's value, its VJP, and on request f'', the full Jacobian and the
    Jacobian-vector product along ``tangent`` (forward mode)."""
    if second_order and not spec.elementwise:
        raise InvalidInput(
            f"{spec.name} is not elementwise, so it has no elementwise second derivative; "
            "ask for the jacobian, or differentiate an expression for its Hessian.",
            error_type="not_elementwise",
        )
    if spec.check is not None:
        spec.check(x, params)

    def fn(t: torch.Tensor) -> torch.Tensor:
        return spec.fn(t, **params)

    with torch_errors(spec.name):
        grad_output = _checked_grad_output(grad_output, x, spec)
        if spec.backward is not None:
            output = spec.fn(x, **params)
            grad = spec.backward(ones_for(output) if grad_output is None else grad_output, x, output, params)
        else:
            output, grad = value_and_vjp(fn, x, grad_output)
        grad2 = None
        if second_order:
            grad2 = torch.zeros_like(x) if spec.piecewise_linear else elementwise_second_derivative(fn, x)
        jac = None
        if want_jacobian:
            check_jacobian_size(output.shape, x.shape, max_jacobian_elements)
            jac = jacobian(fn, x)
        jvp = None
        if tangent is not None:
            if tangent.shape != x.shape:
                raise InvalidInput(
                    f"tangent has shape {list(tangent.shape)}, but input has shape {list(x.shape)}.",
                    error_type="shape_mismatch",
                    where="tangent",
                )
            jvp = value_and_jvp(fn, (x,), (tangent,))[1]
    return ActivationResult(output, grad, grad2, jac, jvp)


SMALL_ONES = 64
"""Inputs up to this many elements share a cached all-ones cotangent (see ``ones_for``)."""


def ones_for(output: torch.Tensor) -> torch.Tensor:
    """All ones shaped like ``output``: the default cotangent. A small CPU one is made once and
    shared, since the backward kernels only read it (tested: it must never reach code that writes
    into it); making it costs a small request as much as any of its other torch calls."""
    if output.is_cpu and output.numel() <= SMALL_ONES:
        return _cached_ones(output.shape, output.dtype)
    return torch.ones_like(output)


@functools.lru_cache(maxsize=256)
def _cached_ones(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    return torch.ones(shape, dtype=dtype, device="cpu")


def _checked_grad_output(
    grad_output: torch.Tensor | None, x: torch.Tensor, spec: ActivationSpec
) -> torch.Tensor | None:
    # Every activation keeps its input's shape, so grad_output must have that shape too.
    if grad_output is not None and grad_output.shape != x.shape:
        raise InvalidInput(
            f"grad_output has shape {list(grad_output.shape)}, but {spec.name}'s output has shape {list(x.shape)}.",
            error_type="shape_mismatch",
        )
    return grad_output
