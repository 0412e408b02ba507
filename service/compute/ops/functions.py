"""The vocabulary of the expression language: every function an expression may call.

Activations and losses come from their registries (so a new entry is callable at once); the
mathematical functions are listed here. Each function declares its arguments: tensors, which
are evaluated, and static options (ints, floats, bools, strings), which must be literals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from service.compute.ops.activations import ACTIVATIONS, ActivationSpec
from service.compute.ops.losses import LOSSES, LossSpec, loss_value
from service.compute.ops.registry import Param, ParamValue

ArgKind = Literal["tensor", "optional_tensor", "int", "optional_int", "float", "optional_float", "bool", "str"]
REQUIRED: Any = object()


@dataclass(frozen=True)
class Arg:
    name: str
    kind: ArgKind
    default: Any = REQUIRED
    choices: tuple[str, ...] | None = None

    def describe(self) -> str:
        text = f"{self.name}: {self.kind}"
        if self.choices:
            text += " in " + "|".join(self.choices)
        return text if self.default is REQUIRED else f"{text} = {self.default!r}"


@dataclass(frozen=True)
class Function:
    """A callable of the language: ``call(*tensors_and_options_in_declared_order)``."""

    name: str
    call: Callable[..., torch.Tensor]
    args: tuple[Arg, ...]
    doc: str
    category: Literal["math", "activation", "loss"] = "math"
    variadic: Arg | None = None
    """Extra positional arguments of one kind after ``args`` (reshape's dims)."""

    def signature(self) -> str:
        parts = [arg.describe() for arg in self.args]
        if self.variadic is not None:
            parts.append(f"*{self.variadic.name}: {self.variadic.kind}")
        return f"{self.name}({', '.join(parts)})"


X = Arg("x", "tensor")
DIM = Arg("dim", "optional_int", None)
KEEPDIM = Arg("keepdim", "bool", False)


def _reduce(op: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def call(x: torch.Tensor, dim: int | None, keepdim: bool) -> torch.Tensor:
        return op(x, dim=dim, keepdim=keepdim) if dim is not None else _whole(op(x), x, keepdim)

    return call


def _extreme(op: Callable[..., Any]) -> Callable[..., torch.Tensor]:
    def call(x: torch.Tensor, dim: int | None, keepdim: bool) -> torch.Tensor:
        if dim is None:
            return _whole(op(x), x, keepdim)
        return op(x, dim=dim, keepdim=keepdim).values  # type: ignore[no-any-return]

    return call


def _whole(reduced: torch.Tensor, x: torch.Tensor, keepdim: bool) -> torch.Tensor:
    """A reduction over every element; with keepdim, shaped [1, ...] like x, as torch.sum's."""
    return reduced.reshape((1,) * x.dim()) if keepdim else reduced


def _elementwise_function(name: str, fn: Callable[[torch.Tensor], torch.Tensor], doc: str) -> Function:
    return Function(name, fn, (X,), doc)


MATH: tuple[Function, ...] = (
    *(
        _elementwise_function(name, getattr(torch, name), doc)
        for name, doc in (
            ("exp", "e^x"),
            ("log", "natural logarithm"),
            ("log2", "base-2 logarithm"),
            ("log10", "base-10 logarithm"),
            ("log1p", "log(1 + x)"),
            ("sqrt", "square root"),
            ("abs", "absolute value"),
            ("sin", "sine"),
            ("cos", "cosine"),
            ("tan", "tangent"),
            ("sinh", "hyperbolic sine"),
            ("cosh", "hyperbolic cosine"),
        )
    ),
    Function("sum", _reduce(torch.sum), (X, DIM, KEEPDIM), "sum of all elements, or along dim"),
    Function("mean", _reduce(torch.mean), (X, DIM, KEEPDIM), "mean of all elements, or along dim"),
    Function("prod", _reduce(torch.prod), (X, DIM, KEEPDIM), "product of all elements, or along dim"),
    Function("max", _extreme(torch.max), (X, DIM, KEEPDIM), "largest element, or the largest along dim"),
    Function("min", _extreme(torch.min), (X, DIM, KEEPDIM), "smallest element, or the smallest along dim"),
    Function("maximum", torch.maximum, (Arg("a", "tensor"), Arg("b", "tensor")), "elementwise maximum"),
    Function("minimum", torch.minimum, (Arg("a", "tensor"), Arg("b", "tensor")), "elementwise minimum"),
    Function(
        "norm",
        lambda x, p, dim, keepdim: torch.linalg.vector_norm(x, ord=p, dim=dim, keepdim=keepdim),
        (X, Arg("p", "float", 2.0), DIM, KEEPDIM),
        "vector p-norm of all elements, or along dim",
    ),
    Function(
        "logsumexp",
        lambda x, dim, keepdim: torch.logsumexp(x, dim=dim, keepdim=keepdim),
        (X, Arg("dim", "int", -1), KEEPDIM),
        "log(sum(exp(x))) along dim, computed stably",
    ),
    Function("matmul", torch.matmul, (Arg("a", "tensor"), Arg("b", "tensor")), "matrix product, as a @ b"),
    Function("dot", torch.dot, (Arg("a", "tensor"), Arg("b", "tensor")), "dot product of two vectors"),
    Function("transpose", torch.transpose, (X, Arg("dim0", "int", 0), Arg("dim1", "int", 1)), "swap two dimensions"),
    Function("reshape", lambda x, *shape: x.reshape(shape), (X,), "x with a new shape", variadic=Arg("shape", "int")),
    Function("ones_like", torch.ones_like, (X,), "ones of x's shape"),
    Function("zeros_like", torch.zeros_like, (X,), "zeros of x's shape"),
    Function(
        "clamp",
        lambda x, min, max: torch.clamp(x, min=min, max=max),
        (X, Arg("min", "optional_float", None), Arg("max", "optional_float", None)),
        "x limited to [min, max]",
    ),
    Function(
        "where",
        torch.where,
        (Arg("condition", "tensor"), Arg("a", "tensor"), Arg("b", "tensor")),
        "a where condition holds, else b (conditions come from comparisons)",
    ),
)


def _param_arg(param: Param) -> Arg:
    kind: ArgKind
    if param.tensor:
        kind = "optional_tensor"
    elif param.choices:
        kind = "str"
    else:
        kind = {bool: "bool", int: "int", float: "float", str: "str"}[param.python_type]  # type: ignore[assignment]
    return Arg(param.name, kind, param.default, param.choices)


def _activation_function(spec: ActivationSpec) -> Function:
    names = [param.name for param in spec.params]

    def call(x: torch.Tensor, *options: ParamValue) -> torch.Tensor:
        params = dict(zip(names, options, strict=True))
        if spec.check is not None:
            spec.check(x, params)
        return spec.fn(x, **params)

    return Function(spec.name, call, (X, *(_param_arg(param) for param in spec.params)), spec.formula, "activation")


def _loss_function(spec: LossSpec) -> Function:
    tensors = [Arg("input", "tensor")]
    if spec.target != "none":
        tensors.append(Arg("target", "tensor"))
    if spec.weight != "none":
        tensors.append(Arg("weight", "optional_tensor", None))
    names = [param.name for param in spec.params]

    def call(*values: Any) -> torch.Tensor:
        given = dict(zip([arg.name for arg in tensors], values, strict=False))
        params = dict(zip(names, values[len(tensors) :], strict=True))
        return loss_value(spec, given["input"], given.get("target"), given.get("weight"), params)

    return Function(spec.name, call, (*tensors, *(_param_arg(param) for param in spec.params)), spec.formula, "loss")


def all_functions() -> Iterator[Function]:
    """The whole vocabulary: registry entries first, then the mathematical functions."""
    yield from (_activation_function(spec) for spec in ACTIVATIONS)
    yield from (_loss_function(spec) for spec in LOSSES)
    names = {spec.name for spec in ACTIVATIONS} | {spec.name for spec in LOSSES}
    yield from (function for function in MATH if function.name not in names)


FUNCTIONS: dict[str, Function] = {function.name: function for function in all_functions()}
