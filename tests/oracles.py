"""Independent references for the activation and loss tests, written by hand from the documented
formulas and never read from the service's registries.

``ACTIVATIONS[name](x, **params)`` and ``LOSSES[name](input, target, weight, **params)`` take the
same keyword parameters as the registered ops, with torch's documented defaults written in their
own signatures, so a test can call the service with no params and an oracle with none, and so
check the registry's defaults too. The tests compare the service's values against them, and the
service's derivatives against autograd through them: an entry registered with the wrong function,
a wrong default or an ignored parameter fails.

The formulas are closed forms in elementary torch functions (exp, log1p, expm1, erfc, ...), written
so that autograd through them is accurate as well: ``_where`` feeds each branch only the inputs it
is chosen for, so a branch that would overflow elsewhere never turns a derivative into NaN. Their
derivatives are checked by finite differences in tests/compute.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Tensor = torch.Tensor

# SELU's constants, from Klambauer et al. (2017), as torch documents them.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _where(
    condition: Tensor,
    x: Tensor,
    if_true: Callable[[Tensor], Tensor],
    if_false: Callable[[Tensor], Tensor],
    safe: float = 0.0,
) -> Tensor:
    """``if_true(x)`` where ``condition`` holds, else ``if_false(x)``; each branch sees ``safe`` in
    place of the inputs it is not chosen for, so neither overflows there (nor poisons a gradient)."""
    fill = torch.full_like(x, safe)
    return torch.where(condition, if_true(torch.where(condition, x, fill)), if_false(torch.where(condition, fill, x)))


# Activations: oracle(x, **params).


def sigmoid(x: Tensor) -> Tensor:
    # 1 / (1 + exp(-x)), as exp(x) / (1 + exp(x)) for negative x so that exp never overflows.
    return _where(x >= 0, x, lambda t: 1 / (1 + torch.exp(-t)), lambda t: torch.exp(t) / (1 + torch.exp(t)))


def tanh(x: Tensor) -> Tensor:
    # (e^2x - 1) / (e^2x + 1), with e^-2|x| so that nothing overflows and small |x| keeps its digits.
    return _where(
        x >= 0,
        x,
        lambda t: -torch.expm1(-2 * t) / (2 + torch.expm1(-2 * t)),
        lambda t: torch.expm1(2 * t) / (2 + torch.expm1(2 * t)),
    )


def relu(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, 0.0)


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    return torch.where(x > 0, x, negative_slope * x)


def selu(x: Tensor) -> Tensor:
    return SELU_SCALE * _where(x > 0, x, lambda t: t, lambda t: SELU_ALPHA * torch.expm1(t))


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    # log(1 + exp(beta x)) / beta, reverting to x where beta x > threshold.
    return _where(beta * x > threshold, x, lambda t: t, lambda t: torch.log1p(torch.exp(beta * t)) / beta)


def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    return _where(x > 0, x, lambda t: t, lambda t: alpha * torch.expm1(t))


def celu(x: Tensor, alpha: float = 1.0) -> Tensor:
    return _where(x > 0, x, lambda t: t, lambda t: alpha * torch.expm1(t / alpha))


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    if approximate == "none":  # x Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2
        return 0.5 * x * torch.erfc(-x / math.sqrt(2.0))
    if approximate == "tanh":
        return 0.5 * x * (1 + tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    raise ValueError(f"approximate={approximate!r}")


def silu(x: Tensor) -> Tensor:
    return x * sigmoid(x)


def mish(x: Tensor) -> Tensor:
    return x * tanh(softplus(x))


def hardtanh(x: Tensor, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    return torch.where(x <= min_val, min_val, torch.where(x >= max_val, max_val, x))


def hardsigmoid(x: Tensor) -> Tensor:
    return torch.where(x <= -3, 0.0, torch.where(x >= 3, 1.0, x / 6 + 0.5))


def hardswish(x: Tensor) -> Tensor:
    return x * torch.where(x <= -3, 0.0, torch.where(x >= 3, 6.0, x + 3)) / 6


def relu6(x: Tensor) -> Tensor:
    return torch.where(x <= 0, 0.0, torch.where(x >= 6, 6.0, x))


def softsign(x: Tensor) -> Tensor:
    return x / (1 + x.abs())


def logsigmoid(x: Tensor) -> Tensor:
    # -log(1 + exp(-x)), as x - log(1 + exp(x)) for negative x.
    return _where(x < 0, x, lambda t: t - torch.log1p(torch.exp(t)), lambda t: -torch.log1p(torch.exp(-t)))


def tanhshrink(x: Tensor) -> Tensor:
    return x - tanh(x)


def softshrink(x: Tensor, lambd: float = 0.5) -> Tensor:
    return torch.where(x > lambd, x - lambd, torch.where(x < -lambd, x + lambd, 0.0))


def hardshrink(x: Tensor, lambd: float = 0.5) -> Tensor:
    return torch.where((x > lambd) | (x < -lambd), x, 0.0)


def threshold(x: Tensor, threshold: float = 0.0, value: float = 0.0) -> Tensor:
    # torch.nn.functional.threshold has no defaults; 0 and 0 (that is, relu) are the service's
    # documented ones.
    return torch.where(x > threshold, x, value)


def _shifted(x: Tensor, dim: int) -> Tensor:
    # Subtracting the max changes nothing mathematically, so it carries no gradient.
    return x - x.amax(dim=dim, keepdim=True).detach()


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    exp = torch.exp(_shifted(x, dim))
    return exp / exp.sum(dim=dim, keepdim=True)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    shifted = _shifted(x, dim)
    return shifted - torch.log(torch.exp(shifted).sum(dim=dim, keepdim=True))


def softmin(x: Tensor, dim: int = -1) -> Tensor:
    return softmax(-x, dim=dim)


ACTIVATIONS: dict[str, Callable[..., Tensor]] = {
    "sigmoid": sigmoid,
    "tanh": tanh,
    "relu": relu,
    "leaky_relu": leaky_relu,
    "selu": selu,
    "softplus": softplus,
    "elu": elu,
    "celu": celu,
    "gelu": gelu,
    "silu": silu,
    "mish": mish,
    "hardtanh": hardtanh,
    "hardsigmoid": hardsigmoid,
    "hardswish": hardswish,
    "relu6": relu6,
    "softsign": softsign,
    "logsigmoid": logsigmoid,
    "tanhshrink": tanhshrink,
    "softshrink": softshrink,
    "hardshrink": hardshrink,
    "threshold": threshold,
    "softmax": softmax,
    "log_softmax": log_softmax,
    "softmin": softmin,
}


# Losses: oracle(input, target, weight, **params).


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction={reduction!r}")


def _no_weight(weight: Tensor | None) -> None:
    if weight is not None:
        raise ValueError("this loss takes no weight")


def mse(input: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    _no_weight(weight)
    return _reduce((input - target) ** 2, reduction)


def l1(input: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    _no_weight(weight)
    return _reduce((input - target).abs(), reduction)


def smooth_l1(
    input: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean", beta: float = 1.0
) -> Tensor:
    _no_weight(weight)
    diff = (input - target).abs()
    if beta == 0:  # torch: plain l1
        return _reduce(diff, reduction)
    return _reduce(torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta), reduction)


def huber(
    input: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean", delta: float = 1.0
) -> Tensor:
    _no_weight(weight)
    diff = (input - target).abs()
    return _reduce(torch.where(diff < delta, 0.5 * diff**2, delta * (diff - 0.5 * delta)), reduction)


def _class_dim(input: Tensor) -> int:
    return 1 if input.dim() >= 2 else 0


def _along_classes(values: Tensor, input: Tensor) -> Tensor:
    """A per-class vector shaped to broadcast against ``input``'s class dimension."""
    return values.reshape((-1,) + (1,) * (input.dim() - _class_dim(input) - 1))


def _picked(
    log_probabilities: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor]:
    """For class-index targets: each position's -weight[t] log p[t], its weight[t] (both 0 where the
    target is ignore_index) and the mask of the positions kept."""
    class_dim = _class_dim(log_probabilities)
    classes = log_probabilities.shape[class_dim]
    kept = target != ignore_index
    one_hot = (_along_classes(torch.arange(classes), log_probabilities) == target.unsqueeze(class_dim)) & (
        kept.unsqueeze(class_dim)
    )
    class_weight = torch.ones(classes, dtype=log_probabilities.dtype) if weight is None else weight
    weights = _along_classes(class_weight, log_probabilities)
    picked_log_p = torch.where(one_hot, log_probabilities, 0.0).sum(class_dim)
    picked_weight = torch.where(one_hot, weights, 0.0).sum(class_dim)
    return -picked_weight * picked_log_p, picked_weight, kept


def nll(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> Tensor:
    # The weighted mean divides by the total weight of the targets that are not ignored.
    losses, weights, _ = _picked(input, target, weight, ignore_index)
    if reduction == "mean":
        return losses.sum() / weights.sum()
    return _reduce(losses, reduction)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> Tensor:
    class_dim = _class_dim(input)
    classes = input.shape[class_dim]
    label_smoothing = max(label_smoothing, 0.0)  # torch smooths only with a positive one
    log_p = log_softmax(input, dim=class_dim)
    class_weight = torch.ones(classes, dtype=input.dtype) if weight is None else weight
    weights = _along_classes(class_weight, input)
    if target.is_floating_point():
        # Class probabilities: smoothing mixes them with the uniform distribution; ignore_index
        # plays no part, and the mean is over the batch (input.numel() / classes positions).
        mixed = target * (1 - label_smoothing) + label_smoothing / classes
        losses = -(weights * mixed * log_p).sum(class_dim)
        if reduction == "mean":
            return losses.sum() / (input.numel() / classes)
        return _reduce(losses, reduction)
    # Class indices: (1 - e) nll + e (the loss against the uniform distribution), positions with
    # target == ignore_index counting nowhere; the mean divides by the kept targets' total weight.
    picked, picked_weight, kept = _picked(log_p, target, weight, ignore_index)
    uniform = torch.where(kept, -(weights * log_p).sum(class_dim), 0.0) / classes
    losses = (1 - label_smoothing) * picked + label_smoothing * uniform
    if reduction == "mean":
        return losses.sum() / picked_weight.sum()
    return _reduce(losses, reduction)


def binary_cross_entropy(
    input: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    # torch clamps each log at -100 so that a certain wrong answer costs 100, not infinity.
    losses = -(target * torch.log(input).clamp(min=-100) + (1 - target) * torch.log1p(-input).clamp(min=-100))
    return _reduce(losses if weight is None else weight * losses, reduction)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    # log(1 - sigmoid(x)) = logsigmoid(-x); pos_weight weighs the positive term, per class (the
    # last dimension).
    positive = target * logsigmoid(input)
    if pos_weight is not None:
        positive = pos_weight * positive
    losses = -(positive + (1 - target) * logsigmoid(-input))
    return _reduce(losses if weight is None else weight * losses, reduction)


def kl_div(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "batchmean",
    log_target: bool = False,
) -> Tensor:
    _no_weight(weight)
    if log_target:
        losses = torch.exp(target) * (target - input)
    else:  # target (log target - input), with 0 log 0 = 0
        losses = _where(target != 0, target, lambda t: t * torch.log(t), torch.zeros_like, safe=1.0) - target * input
    if reduction == "batchmean":
        return losses.sum() / input.shape[0] if input.dim() else losses.sum()
    return _reduce(losses, reduction)


def poisson_nll(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    log_input: bool = True,
    full: bool = False,
    eps: float = 1e-8,
) -> Tensor:
    _no_weight(weight)
    losses = torch.exp(input) - target * input if log_input else input - target * torch.log(input + eps)
    if full:  # Stirling's approximation of log(target!), added where target > 1
        losses = losses + _where(
            target > 1,
            target,
            lambda t: t * torch.log(t) - t + 0.5 * torch.log(2 * math.pi * t),
            torch.zeros_like,
            safe=2.0,
        )
    return _reduce(losses, reduction)


def soft_margin(input: Tensor, target: Tensor, weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    _no_weight(weight)
    return _reduce(-logsigmoid(target * input), reduction)  # log(1 + exp(-target input))


def entropy(
    input: Tensor,
    target: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    base: str = "e",
    dim: int = -1,
) -> Tensor:
    if target is not None:
        raise ValueError("entropy takes no target")
    _no_weight(weight)
    # -sum p log p along dim, with 0 log 0 = 0; in bits for base 2.
    per_distribution = -_where(input != 0, input, lambda p: p * torch.log(p), torch.zeros_like, safe=1.0).sum(dim)
    if base == "2":
        per_distribution = per_distribution / math.log(2.0)
    elif base != "e":
        raise ValueError(f"base={base!r}")
    return _reduce(per_distribution, reduction)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "mse": mse,
    "l1": l1,
    "smooth_l1": smooth_l1,
    "huber": huber,
    "cross_entropy": cross_entropy,
    "nll": nll,
    "binary_cross_entropy": binary_cross_entropy,
    "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits,
    "kl_div": kl_div,
    "poisson_nll": poisson_nll,
    "soft_margin": soft_margin,
    "entropy": entropy,
}
