"""Losses and probability functions, each one registry entry around torch.nn.functional.

Every loss is called as ``fn(input, target, weight, **params)``. Inputs are checked before torch
sees them wherever torch would assert on a GPU (class indices, BCE's [0, 1] range), since a
device-side assert poisons the whole process.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from service.compute.ops.registry import Param, ParamValue, Registry, Rule, defaults
from service.compute.runtime import concrete, torch_errors
from service.errors import InvalidInput

TargetKind = Literal["float", "index", "float_or_index", "none"]
WeightKind = Literal["class", "elementwise", "none"]
GradName = Literal["input", "target", "weight"]


@dataclass(frozen=True)
class LossSample:
    """Inputs the generated tests feed a loss: shapes, how to draw them, and params."""

    input_shape: tuple[int, ...] = (3, 4)
    target: Literal["float", "index", "probabilities", "unit", "sign", "none"] = "float"
    input_kind: Literal["real", "unit", "log_probabilities", "probabilities"] = "real"
    weight_shape: tuple[int, ...] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class LossSpec:
    """A registered loss: its torch function, what its target and weight are, and what torch can
    differentiate for each kind of target."""

    name: str
    fn: Callable[..., torch.Tensor]
    formula: str
    target: TargetKind
    weight: WeightKind
    differentiable: Mapping[str, frozenset[GradName]]
    """Keyed by the target's resolved kind ("float", "index" or "none")."""
    params: tuple[Param, ...] = ()
    rules: tuple[Rule, ...] = ()
    samples: tuple[LossSample, ...] = (LossSample(),)
    check: Callable[[torch.Tensor, torch.Tensor | None, Mapping[str, Any]], None] | None = None

    def defaults(self) -> dict[str, ParamValue | None]:
        return defaults(self.params)


LOSSES: Registry[LossSpec] = Registry("loss")

DEPRECATED_MEAN = " (not torch's deprecated alias elementwise_mean)."
REDUCTION = Param(
    "reduction", "mean", "How per-element losses are combined" + DEPRECATED_MEAN, choices=("mean", "sum", "none")
)
KL_REDUCTION = Param(
    "reduction",
    "batchmean",
    "batchmean (the sum over the batch's first dimension: the true KL divergence), mean, sum or none" + DEPRECATED_MEAN,
    choices=("batchmean", "mean", "sum", "none"),
)
IGNORE_INDEX = Param("ignore_index", -100, "Target index that contributes neither loss nor gradient.")
ALL_FLOAT: Mapping[str, frozenset[GradName]] = {"float": frozenset({"input", "target"})}


def _elementwise(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Broadcast input and target explicitly (torch would warn), then call ``fn``."""

    def call(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, **params: Any) -> torch.Tensor:
        input, target = torch.broadcast_tensors(input, target)  # type: ignore[no-untyped-call]
        if weight is not None:
            params["weight"] = weight
        return fn(input, target, **params)

    return call


def check_unit_interval(input: torch.Tensor, target: torch.Tensor | None, params: Mapping[str, Any]) -> None:
    for name, tensor in (("input", input), ("target", target)):
        values = None if tensor is None else concrete(tensor)
        if values is not None and not bool(((values >= 0) & (values <= 1)).all()):
            raise InvalidInput(
                f"binary_cross_entropy needs {name} values in [0, 1] (probabilities); "
                "use binary_cross_entropy_with_logits for logits.",
                error_type="out_of_range",
                where=name,
            )


def _register(spec: LossSpec) -> None:
    LOSSES.register(spec)


_register(
    LossSpec(
        "mse",
        _elementwise(F.mse_loss),
        "mean((input - target)^2)",
        target="float",
        weight="none",
        differentiable=ALL_FLOAT,
        params=(REDUCTION,),
        samples=(LossSample(), LossSample(params={"reduction": "none"}), LossSample(input_shape=(1, 2))),
    )
)
_register(
    LossSpec(
        "l1",
        _elementwise(F.l1_loss),
        "mean(|input - target|)",
        target="float",
        weight="none",
        differentiable=ALL_FLOAT,
        params=(REDUCTION,),
        samples=(LossSample(), LossSample(params={"reduction": "sum"})),
    )
)
_register(
    LossSpec(
        "smooth_l1",
        _elementwise(F.smooth_l1_loss),
        "0.5 (input - target)^2 / beta if |input - target| < beta else |input - target| - 0.5 beta",
        target="float",
        weight="none",
        differentiable=ALL_FLOAT,
        params=(REDUCTION, Param("beta", 1.0, "Where the quadratic part ends.", ge=0.0)),
        samples=(LossSample(), LossSample(params={"beta": 0.5, "reduction": "none"})),
    )
)
_register(
    LossSpec(
        "huber",
        _elementwise(F.huber_loss),
        "0.5 (input - target)^2 if |input - target| < delta else delta (|input - target| - 0.5 delta)",
        target="float",
        weight="none",
        differentiable=ALL_FLOAT,
        params=(REDUCTION, Param("delta", 1.0, "Where the quadratic part ends.", gt=0.0)),
        samples=(LossSample(), LossSample(params={"delta": 2.0})),
    )
)


def _class_count(input: torch.Tensor) -> int:
    return int(input.shape[1] if input.dim() >= 2 else input.shape[0])


def index_target_shape(input: torch.Tensor) -> tuple[int, ...]:
    """The shape class indices must have for logits ``input`` ([C], [N, C] or [N, C, d1, ...])."""
    return () if input.dim() == 1 else (input.shape[0], *input.shape[2:])


def check_classes(input: torch.Tensor, target: torch.Tensor | None, params: Mapping[str, Any]) -> None:
    """Shapes and class indices, checked here: torch would raise, or assert on a GPU."""
    if input.dim() == 0:
        raise InvalidInput(
            "input must hold class scores: shape [C], [N, C] or [N, C, d1, ...].",
            error_type="shape_mismatch",
        )
    if target is None or target.is_floating_point():
        return
    classes = _class_count(input)
    ignore = params.get("ignore_index", -100)
    values = concrete(target)
    if values is None:
        return
    bad = ((values < 0) | (values >= classes)) & (values != ignore)
    if bool(bad.any()):
        position = [int(i) for i in bad.nonzero()[0].tolist()]
        raise InvalidInput(
            f"target holds class index {int(values[tuple(position)])} at {position}, "
            f"outside [0, {classes}) (and not ignore_index={ignore}).",
            error_type="class_index_out_of_range",
            where=f"target{''.join(f'[{i}]' for i in position)}",
        )


def _class_weighted(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def call(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, **params: Any) -> torch.Tensor:
        return fn(input, target, weight=weight, **params)

    return call


_register(
    LossSpec(
        "cross_entropy",
        _class_weighted(F.cross_entropy),
        "-sum_c target_c log softmax(input)_c; class indices pick one c (= nll(log_softmax(input)))",
        target="float_or_index",
        weight="class",
        differentiable={
            "index": frozenset({"input"}),
            "float": frozenset({"input", "target", "weight"}),
        },
        params=(
            REDUCTION,
            IGNORE_INDEX,
            Param(
                "label_smoothing",
                0.0,
                "Mix of the target with the uniform distribution; a negative one is none (as in torch).",
                le=1.0,
            ),
        ),
        samples=(
            LossSample(target="index"),
            LossSample(target="index", weight_shape=(4,), params={"label_smoothing": 0.1}),
            LossSample(target="probabilities", weight_shape=(4,)),
            LossSample(input_shape=(5,), target="index"),
            LossSample(input_shape=(2, 3, 4), target="index", params={"reduction": "none"}),
            LossSample(target="index", params={"label_smoothing": -0.5}),
        ),
        check=check_classes,
    )
)
_register(
    LossSpec(
        "nll",
        _class_weighted(F.nll_loss),
        "-input[target] (input holds log-probabilities), weighted and averaged over the batch",
        target="index",
        weight="class",
        differentiable={"index": frozenset({"input"})},
        params=(REDUCTION, IGNORE_INDEX),
        samples=(
            LossSample(target="index", input_kind="log_probabilities"),
            LossSample(target="index", input_kind="log_probabilities", weight_shape=(4,)),
            LossSample(target="index", input_kind="log_probabilities", params={"reduction": "sum"}),
        ),
        check=check_classes,
    )
)
_register(
    LossSpec(
        "binary_cross_entropy",
        _elementwise(F.binary_cross_entropy),
        "-(target log(input) + (1 - target) log(1 - input)), input in [0, 1]",
        target="float",
        weight="elementwise",
        differentiable={"float": frozenset({"input", "target"})},
        params=(REDUCTION,),
        samples=(
            LossSample(input_kind="unit", target="unit"),
            LossSample(input_kind="unit", target="unit", weight_shape=(4,), params={"reduction": "none"}),
        ),
        check=check_unit_interval,
    )
)


_register(
    LossSpec(
        "binary_cross_entropy_with_logits",
        _elementwise(F.binary_cross_entropy_with_logits),
        "-(pos_weight target log sigmoid(input) + (1 - target) log(1 - sigmoid(input)))",
        target="float",
        weight="elementwise",
        differentiable={"float": frozenset({"input", "target"})},
        params=(
            REDUCTION,
            Param(
                "pos_weight",
                None,
                "Weight of positive examples, per class (a number or a tensor).",
                tensor=True,
            ),
        ),
        samples=(
            LossSample(target="unit"),
            LossSample(target="unit", weight_shape=(3, 4), params={"pos_weight": [1.0, 2.0, 0.5, 3.0]}),
        ),
    )
)


def _kl_div(input: torch.Tensor, target: torch.Tensor, **params: Any) -> torch.Tensor:
    with warnings.catch_warnings():
        # reduction="mean" is allowed, as in torch, without torch's advice to use batchmean.
        warnings.simplefilter("ignore", UserWarning)
        return F.kl_div(input, target, **params)


_register(
    LossSpec(
        "kl_div",
        _elementwise(_kl_div),
        "sum target (log target - input) (input holds log-probabilities; target too if log_target)",
        target="float",
        weight="none",
        differentiable=ALL_FLOAT,
        params=(KL_REDUCTION, Param("log_target", False, "Whether target holds log-probabilities.")),
        samples=(
            LossSample(input_kind="log_probabilities", target="probabilities"),
            LossSample(input_kind="log_probabilities", target="probabilities", params={"reduction": "mean"}),
            LossSample(input_kind="log_probabilities", target="float", params={"log_target": True}),
        ),
    )
)


_register(
    LossSpec(
        "poisson_nll",
        _elementwise(F.poisson_nll_loss),
        "exp(input) - target input (log_input), or input - target log(input + eps)",
        target="float",
        weight="none",
        differentiable=ALL_FLOAT,
        params=(
            REDUCTION,
            Param("log_input", True, "Whether input is the log of the rate."),
            Param("full", False, "Add the Stirling approximation term."),
            Param("eps", 1e-8, "Keeps log away from 0 when log_input is false (any value, as in torch)."),
        ),
        samples=(
            LossSample(target="unit"),
            LossSample(input_kind="unit", target="unit", params={"log_input": False, "full": True}),
            LossSample(input_kind="unit", target="unit", params={"log_input": False, "eps": -0.01}),
        ),
    )
)
_register(
    LossSpec(
        "soft_margin",
        _elementwise(F.soft_margin_loss),
        "mean(log(1 + exp(-target input))), target in {-1, 1}",
        target="float",
        weight="none",
        differentiable={"float": frozenset({"input"})},
        params=(REDUCTION,),
        samples=(LossSample(target="sign"), LossSample(target="sign", params={"reduction": "none"})),
    )
)


def _entropy(
    input: torch.Tensor,
    target: torch.Tensor | None,
    weight: torch.Tensor | None,
    *,
    base: str,
    dim: int,
    reduction: str,
) -> torch.Tensor:
    per_distribution: torch.Tensor = torch.special.entr(input).sum(dim=dim)
    if base == "2":
        per_distribution = per_distribution / math.log(2.0)
    reduce: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "none": lambda t: t,
        "sum": torch.sum,
        "mean": torch.mean,
    }
    return reduce[reduction](per_distribution)


def check_entropy_dim(input: torch.Tensor, target: torch.Tensor | None, params: Mapping[str, Any]) -> None:
    rank = max(input.dim(), 1)
    if not -rank <= params["dim"] < rank:
        raise InvalidInput(
            f"dim={params['dim']} is out of range for an input with {input.dim()} dimension(s).",
            error_type="invalid_param",
            param="dim",
        )


_register(
    LossSpec(
        "entropy",
        _entropy,
        "-sum p log(p) along dim (in bits for base 2: -sum p log2(p)), then reduced over the rest",
        target="none",
        weight="none",
        differentiable={"none": frozenset({"input"})},
        params=(
            REDUCTION,
            Param("base", "e", "Logarithm base: e (nats) or 2 (bits).", choices=("e", "2")),
            Param("dim", -1, "The dimension each distribution lies along."),
        ),
        samples=(
            LossSample(input_shape=(4,), input_kind="probabilities", target="none", params={"base": "2"}),
            LossSample(input_kind="probabilities", target="none", params={"reduction": "none"}),
        ),
        check=check_entropy_dim,
    )
)


@dataclass(frozen=True)
class LossResult:
    loss: torch.Tensor
    grads: dict[GradName, torch.Tensor | None]


def evaluate_loss(
    spec: LossSpec,
    input: torch.Tensor,
    target: torch.Tensor | None,
    weight: torch.Tensor | None,
    params: Mapping[str, Any],
    *,
    grad_output: torch.Tensor | None = None,
) -> LossResult:
    """The loss and its gradients w.r.t. input, target and weight wherever torch has them."""
    target = checked_target(spec, input, target, weight, params)
    target_kind = "none" if target is None else ("float" if target.is_floating_point() else "index")
    differentiable = spec.differentiable[target_kind]
    leaves: dict[GradName, torch.Tensor | None] = {
        "input": input.detach().requires_grad_("input" in differentiable),
        "target": None if target is None else _leaf(target, "target" in differentiable),
        "weight": None if weight is None else _leaf(weight, "weight" in differentiable),
    }
    with torch_errors(spec.name), torch.enable_grad():
        loss = spec.fn(leaves["input"], leaves["target"], leaves["weight"], **params)
        if grad_output is not None and grad_output.shape != loss.shape:
            raise InvalidInput(
                f"grad_output has shape {list(grad_output.shape)}, but the loss has shape {list(loss.shape)}.",
                error_type="shape_mismatch",
            )
        wanted: list[GradName] = [name for name, leaf in leaves.items() if leaf is not None and leaf.requires_grad]
        gradients = torch.autograd.grad(
            loss,
            [leaf for leaf in leaves.values() if leaf is not None and leaf.requires_grad],
            torch.ones_like(loss) if grad_output is None else grad_output,
            allow_unused=True,
            materialize_grads=True,
        )
    grads: dict[GradName, torch.Tensor | None] = {"input": None, "target": None, "weight": None}
    grads.update(zip(wanted, gradients, strict=True))
    return LossResult(loss.detach(), grads)


def checked_target(
    spec: LossSpec,
    input: torch.Tensor,
    target: torch.Tensor | None,
    weight: torch.Tensor | None,
    params: Mapping[str, Any],
) -> torch.Tensor | None:
    """Every check a loss needs before torch sees its arguments; returns the resolved target."""
    if not input.is_floating_point():  # only an expression can pass one: x > 0 is boolean
        raise InvalidInput(
            f"{spec.name} needs a floating-point input, not {str(input.dtype).removeprefix('torch.')}.",
            error_type="invalid_dtype",
            where="input",
        )
    target = resolve_target(spec, input, target)
    _check_weight(spec, input, weight)
    if spec.check is not None:
        spec.check(input, target, params)
    return target


def loss_value(
    spec: LossSpec,
    input: torch.Tensor,
    target: torch.Tensor | None,
    weight: torch.Tensor | None,
    params: Mapping[str, Any],
) -> torch.Tensor:
    """The loss alone, after the same checks (the expression language calls losses this way).

    Arguments torch cannot differentiate (class weights beside index targets, ...) are
    detached, so a derivative w.r.t. them is zero rather than an error."""
    target = checked_target(spec, input, target, weight, params)
    kind = "none" if target is None else ("float" if target.is_floating_point() else "index")
    differentiable = spec.differentiable[kind]
    if target is not None and "target" not in differentiable:
        target = target.detach()
    if weight is not None and "weight" not in differentiable:
        weight = weight.detach()
    return spec.fn(input, target, weight, **params)


def _leaf(tensor: torch.Tensor, requires_grad: bool) -> torch.Tensor:
    return tensor.detach().requires_grad_(requires_grad and tensor.is_floating_point())


def resolve_target(spec: LossSpec, input: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor | None:
    """Check the target is there when needed, and decide class indices against probabilities."""
    if spec.target == "none":
        if target is not None:
            raise InvalidInput(f"{spec.name} takes no target.", error_type="unexpected_target")
        return None
    if target is None:
        raise InvalidInput(f"{spec.name} needs a target.", error_type="missing_target")
    if spec.target == "float":
        _check_broadcast(input, target)
        return target.to(input.dtype)
    index_shape = index_target_shape(input) if input.dim() else None
    if spec.target == "float_or_index" and target.is_floating_point() and target.shape == input.shape:
        return target.to(input.dtype)  # class probabilities
    if target.shape != index_shape:
        expected = f"{list(index_shape)}" if index_shape is not None else "(none: input has no class dim)"
        raise InvalidInput(
            f"target has shape {list(target.shape)}; class indices for input of shape "
            f"{list(input.shape)} need shape {expected}"
            + (f", or probabilities of shape {list(input.shape)}." if spec.target == "float_or_index" else "."),
            error_type="shape_mismatch",
        )
    if target.is_floating_point():
        values = concrete(target)
        if values is None:  # shapes only: nothing to check
            return target.to(torch.int64)
        if not bool(torch.isfinite(values).all()) or bool((values.abs() >= 2**62).any()):
            raise InvalidInput(
                f"{spec.name} needs class indices in target; got non-finite or out-of-range values.",
                error_type="invalid_dtype",
                where="target",
            )
        if not bool((values == values.round()).all()):
            raise InvalidInput(
                f"{spec.name} needs integer class indices in target, got fractional values.",
                error_type="invalid_dtype",
                where="target",
            )
        return target.to(torch.int64)
    return target


def _check_broadcast(input: torch.Tensor, other: torch.Tensor, name: str = "target") -> None:
    try:
        shape = torch.broadcast_shapes(input.shape, other.shape)  # type: ignore[no-untyped-call]
    except RuntimeError as exc:
        raise InvalidInput(
            f"{name} of shape {list(other.shape)} does not broadcast with input of shape {list(input.shape)}.",
            error_type="shape_mismatch",
        ) from exc
    if shape != input.shape:
        raise InvalidInput(
            f"{name} of shape {list(other.shape)} would broadcast input of shape {list(input.shape)} "
            f"up to {list(shape)}; input must keep its shape.",
            error_type="shape_mismatch",
        )


def _check_weight(spec: LossSpec, input: torch.Tensor, weight: torch.Tensor | None) -> None:
    if weight is None:
        return
    if spec.weight == "none":
        raise InvalidInput(f"{spec.name} takes no weight.", error_type="unexpected_weight")
    if spec.weight == "class":
        classes = _class_count(input) if input.dim() else 0
        if weight.shape != (classes,):
            raise InvalidInput(
                f"weight must hold one value per class: shape [{classes}], got {list(weight.shape)}.",
                error_type="shape_mismatch",
            )
    else:
        _check_broadcast(input, weight, "weight")
