"""Derivatives shared by every endpoint: VJPs, JVPs, Hessian-vector products, elementwise second
derivatives, Jacobians."""

from __future__ import annotations

from collections.abc import Callable

import torch

from service.errors import InvalidInput, check_limit

TensorFn = Callable[[torch.Tensor], torch.Tensor]


def value_and_vjp(fn: TensorFn, x: torch.Tensor, grad_output: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(x)`` and the vector-Jacobian product ``grad_output^T J`` (ones by default).

    Plain reverse-mode autograd: for one VJP it costs a fraction of torch.func's transform setup.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = fn(x)
        if not y.requires_grad:  # fn ignores its input
            return y.detach(), torch.zeros_like(x)
        (grad,) = torch.autograd.grad(y, x, torch.ones_like(y) if grad_output is None else grad_output)
    return y.detach(), grad


def elementwise_second_derivative(fn: TensorFn, x: torch.Tensor) -> torch.Tensor:
    """f''(x) at every point, for an elementwise f (the derivative of sum f'(x))."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = fn(x)
        if not y.requires_grad:
            return torch.zeros_like(x)
        (first,) = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=True)
        if not first.requires_grad:  # piecewise-linear f: f' is constant wherever defined
            return torch.zeros_like(x)
        (second,) = torch.autograd.grad(first, x, torch.ones_like(first), allow_unused=True, materialize_grads=True)
    return second


def check_jacobian_size(output_shape: torch.Size, input_shape: torch.Size, limit: int) -> None:
    """Refuse a Jacobian with more entries than the configured cap, before computing it."""
    entries = output_shape.numel() * input_shape.numel()
    what = f"Jacobian entries ({tuple(output_shape)} x {tuple(input_shape)})"
    check_limit(entries, limit, what, "jacobian_too_large")


def jacobian(fn: TensorFn, x: torch.Tensor) -> torch.Tensor:
    """d fn(x) / dx with shape ``fn(x).shape + x.shape`` (reverse mode, vectorised by vmap)."""
    result: torch.Tensor = torch.func.jacrev(fn)(x.detach())
    return result


MultiFn = Callable[..., torch.Tensor]


def value_and_vjp_many(
    fn: MultiFn, xs: tuple[torch.Tensor, ...], grad_output: torch.Tensor | None
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """``fn(*xs)`` and ``grad_output^T d fn / d x`` for every x (ones when omitted); one forward
    and one backward pass. A ``grad_output`` not of the value's shape is refused."""
    leaves = tuple(x.detach().requires_grad_(True) for x in xs)
    with torch.enable_grad():
        y = fn(*leaves)
        check_cotangent(grad_output, y)
        if not leaves:
            return y.detach(), ()
        if not y.requires_grad:
            return y.detach(), tuple(torch.zeros_like(x) for x in xs)
        cotangent = torch.ones_like(y) if grad_output is None else grad_output
        grads = torch.autograd.grad(y, leaves, cotangent, allow_unused=True, materialize_grads=True)
    return y.detach(), tuple(grads)


def check_cotangent(grad_output: torch.Tensor | None, value: torch.Tensor) -> None:
    """Refuse a ``grad_output`` not of the value's shape (broadcasting it would be silently wrong)."""
    if grad_output is not None and grad_output.shape != value.shape:
        raise InvalidInput(
            f"grad_output has shape {list(grad_output.shape)}, but the value has shape {list(value.shape)}.",
            error_type="shape_mismatch",
        )


def value_and_jvp(
    fn: MultiFn, xs: tuple[torch.Tensor, ...], tangents: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(*xs)`` and the Jacobian-vector product ``sum_i d fn / d x_i . tangents_i``: forward
    mode, one pass carrying the tangents beside the values."""
    if not xs:
        value = fn().detach()
        return value, torch.zeros_like(value)
    value, jvp = torch.func.jvp(fn, tuple(x.detach() for x in xs), tangents)[:2]
    return value.detach(), jvp.detach()


def hvps(
    fn: MultiFn,
    xs: tuple[torch.Tensor, ...],
    tangents: tuple[torch.Tensor, ...],
    cotangent: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """``H v`` per input, for the Hessian H of the sum of ``fn``'s values (a scalar, or one scalar
    per point of a batch whose points are independent), or of ``cotangent . fn`` when given (the
    derivative of a vector-Jacobian product: a double backward), without forming H: a backward
    pass that keeps its graph, then a second one through the gradient, weighted by the tangents."""
    leaves = tuple(x.detach().requires_grad_(True) for x in xs)
    zeros = tuple(torch.zeros_like(x) for x in xs)
    with torch.enable_grad():
        value = fn(*leaves)
        total = (value if cotangent is None else value * cotangent).sum()
        if not total.requires_grad:
            return zeros
        grads = torch.autograd.grad(total, leaves, create_graph=True, allow_unused=True, materialize_grads=True)
        pairs = [(grad, tangent) for grad, tangent in zip(grads, tangents, strict=True) if grad.requires_grad]
        if not pairs:  # every gradient is constant: the Hessian is zero
            return zeros
        products = torch.autograd.grad(
            [grad for grad, _ in pairs],
            leaves,
            [tangent for _, tangent in pairs],
            allow_unused=True,
            materialize_grads=True,
        )
    return tuple(product.detach() for product in products)
