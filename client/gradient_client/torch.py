"""A remote formula as a differentiable torch function, to first and second order.

``remote(client, expression, inputs=["x", "w"])`` returns a function of torch tensors (one per
name, positional) whose value is computed by the service, and whose derivatives are the
service's too:

- forward: the value (``POST /v1/differentiate``); when some input requires grad and the value
  is a scalar, the gradient comes back with it, so that a forward and backward pass of a scalar
  loss cost one request;
- backward: the vector-Jacobian product, ``grad`` with the incoming ``grad_output`` (one request,
  none for a scalar value whose gradient came with the forward pass);
- double backward (``create_graph=True``, ``torch.autograd.gradgradcheck``): the backward of that
  vector-Jacobian product, one request for both of its parts: ``hvp`` with the same
  ``grad_output`` and the incoming cotangents as ``tangents`` (its derivative with respect to the
  inputs), and ``jvp`` along those tangents (its derivative with respect to ``grad_output``).
  A third derivative raises :class:`ThirdOrderError` (never a silent zero).

The request's dtype follows the inputs and the constants (float64 when any is float64, else
float32); results come back in the inputs' dtype, on the inputs' device. Importing this module imports torch; importing
``gradient_client`` does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from gradient_client import Client, DifferentiateResult
from gradient_client._adapters import ThirdOrderError, has_own_dtype, input_names, request_dtype

Derivative = Literal["grad", "jvp", "hvp"]

__all__ = ["RemoteFunction", "ThirdOrderError", "remote"]


def remote(
    client: Client,
    expression: str,
    inputs: Sequence[str],
    constants: Mapping[str, Any] | None = None,
    *,
    device: str | None = None,
) -> RemoteFunction:
    """The formula ``expression`` as a torch function of the inputs ``inputs`` (tensors, passed
    positionally in that order), differentiable twice. ``constants`` are further inputs of the
    formula (arrays, tensors, numbers; integer ones stay integers), sent with every request and
    never differentiated. ``device`` is where the service computes (its default when ``None``);
    the results always come back on the inputs' device."""
    return RemoteFunction(client, expression, inputs, constants, device=device)


class RemoteFunction:
    """A formula evaluated and differentiated by the service; call it with one tensor per input
    name. See :func:`remote`."""

    def __init__(
        self,
        client: Client,
        expression: str,
        inputs: Sequence[str],
        constants: Mapping[str, Any] | None = None,
        *,
        device: str | None = None,
    ) -> None:
        self.client = client
        self.expression = expression
        self.names = input_names(inputs, constants)
        self.constants: dict[str, Any] = dict(constants or {})
        self.device = device
        self._constant_dtypes = [value.dtype for value in self.constants.values() if has_own_dtype(value)]
        self._scalar: dict[tuple[Any, ...], bool] = {}
        """Whether the value is a scalar, per signature of the inputs (their shapes and dtypes and
        the request's dtype): the only thing remembered between calls."""

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        if len(tensors) != len(self.names):
            raise TypeError(f"expected {len(self.names)} tensors ({', '.join(self.names)}), got {len(tensors)}")
        for name, tensor in zip(self.names, tensors, strict=True):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{name} must be a torch tensor, not {type(tensor).__name__}")
        # Under torch.no_grad, needs_input_grad still says what requires grad: nothing will.
        value: torch.Tensor = _Value.apply(self, torch.is_grad_enabled(), *tensors)  # type: ignore[no-untyped-call]
        return value

    def __repr__(self) -> str:
        return f"RemoteFunction({self.expression!r}, inputs={list(self.names)})"

    # --- requests -------------------------------------------------------------------------------

    def request(
        self,
        tensors: Sequence[torch.Tensor],
        wrt: Sequence[str],
        derivatives: Sequence[Derivative],
        *,
        grad_output: torch.Tensor | None = None,
        tangents: Mapping[str, torch.Tensor] | None = None,
    ) -> DifferentiateResult:
        """One ``differentiate`` request at ``tensors``, in their dtype."""
        inputs: dict[str, Any] = dict(self.constants)
        inputs.update(zip(self.names, tensors, strict=True))
        return self.client.differentiate(
            self.expression,
            inputs,
            wrt=list(wrt),
            derivatives=list(derivatives),
            grad_output=grad_output,
            tangents=None if tangents is None else dict(tangents),
            dtype=self.request_dtype(tensors),
            device=self.device,
        )

    def request_dtype(self, tensors: Sequence[torch.Tensor]) -> str:
        """float64 when any floating input or constant is float64, else float32."""
        return request_dtype([*(t.dtype for t in tensors), *self._constant_dtypes])

    def signature(self, tensors: Sequence[torch.Tensor]) -> tuple[Any, ...]:
        return (self.request_dtype(tensors), *((tuple(t.shape), str(t.dtype)) for t in tensors))

    def maybe_scalar(self, tensors: Sequence[torch.Tensor]) -> bool:
        """Whether the value may be a scalar: true until a call with these signatures told."""
        return self._scalar.get(self.signature(tensors), True)

    def learn(self, tensors: Sequence[torch.Tensor], value: np.ndarray[Any, Any]) -> None:
        self._scalar[self.signature(tensors)] = value.ndim == 0


def _result_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    floating = [t.dtype for t in tensors if t.is_floating_point()]
    if not floating:
        return torch.float32
    dtype = floating[0]
    for other in floating[1:]:
        dtype = torch.promote_types(dtype, other)
    return dtype


def _tensor(array: Any, like_dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A response array as a tensor of ``like_dtype`` on ``device``."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected an array from the service, got {type(array).__name__}")
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).to(device=device, dtype=like_dtype)


def _wrt(names: Sequence[str], needs: Sequence[bool]) -> tuple[str, ...]:
    return tuple(name for name, need in zip(names, needs, strict=True) if need)


class _Value(torch.autograd.Function):
    """The formula's value; its backward is :class:`_VJP` (itself differentiable once more)."""

    @staticmethod
    def forward(ctx: Any, fn: RemoteFunction, grad_enabled: bool, *tensors: torch.Tensor) -> torch.Tensor:
        wrt = _wrt(fn.names, ctx.needs_input_grad[2:]) if grad_enabled else ()
        # A scalar value's gradient comes with it (grad_output 1): backward then needs no request.
        prefetch = bool(wrt) and fn.maybe_scalar(tensors)
        result = fn.request(tensors, wrt if prefetch else (), ["grad"] if prefetch else [])
        value = result.value
        if not isinstance(value, np.ndarray):
            raise TypeError("the service answered without a value")
        fn.learn(tensors, value)
        device = tensors[0].device
        grads: tuple[torch.Tensor, ...] | None = None
        if prefetch and value.ndim == 0 and result.grad is not None:
            grads = tuple(
                _tensor(result.grad[name], t.dtype, t.device)
                for name, t in zip(fn.names, tensors, strict=True)
                if name in wrt
            )
        ctx.fn = fn
        ctx.wrt = wrt
        ctx.grads = grads
        ctx.save_for_backward(*tensors)
        return _tensor(value, _result_dtype(tensors), device)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        fn: RemoteFunction = ctx.fn
        tensors = ctx.saved_tensors
        vjps = _VJP.apply(fn, ctx.wrt, ctx.grads, grad_output, *tensors)  # type: ignore[no-untyped-call]
        by_name = dict(zip(ctx.wrt, vjps, strict=True))
        return (None, None, *(by_name.get(name) for name in fn.names))


class _VJP(torch.autograd.Function):
    """The vector-Jacobian product of the formula with ``grad_output``, one tensor per ``wrt``
    input; its backward is the service's ``hvp`` and ``jvp`` at the same ``grad_output``."""

    @staticmethod
    def forward(
        ctx: Any,
        fn: RemoteFunction,
        wrt: tuple[str, ...],
        grads: tuple[torch.Tensor, ...] | None,
        grad_output: torch.Tensor,
        *tensors: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        ctx.fn = fn
        ctx.wrt = wrt
        ctx.save_for_backward(grad_output, *tensors)
        by_name = dict(zip(fn.names, tensors, strict=True))
        if grads is not None:  # a scalar value: its gradient came with the forward pass
            return tuple(grad_output.to(g.dtype) * g for g in grads)
        result = fn.request(tensors, wrt, ["grad"], grad_output=grad_output)
        if result.grad is None:
            raise TypeError("the service answered without a gradient")
        return tuple(_tensor(result.grad[name], by_name[name].dtype, by_name[name].device) for name in wrt)

    @staticmethod
    def backward(ctx: Any, *cotangents: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        fn: RemoteFunction = ctx.fn
        wrt: tuple[str, ...] = ctx.wrt
        grad_output, *tensors = ctx.saved_tensors
        need_cotangent = bool(ctx.needs_input_grad[3])
        need_inputs = any(ctx.needs_input_grad[4:])
        derivatives: list[Derivative] = []
        if need_cotangent:
            derivatives.append("jvp")
        if need_inputs:
            derivatives.append("hvp")
        if not derivatives:
            return (None,) * (4 + len(tensors))
        # d/d grad_output of sum_i <u_i, J_i^T g> is J u (jvp); d/dx_j is H_j(g . value) u (hvp).
        result = fn.request(
            tensors,
            wrt,
            derivatives,
            grad_output=grad_output,
            tangents=dict(zip(wrt, cotangents, strict=True)),
        )
        d_output = None
        if need_cotangent:
            d_output = _tensor(result.jvp, grad_output.dtype, grad_output.device)
        d_inputs: list[torch.Tensor | None] = [None] * len(tensors)
        if need_inputs:
            if result.hvp is None:
                raise TypeError("the service answered without Hessian-vector products")
            for i, (name, tensor) in enumerate(zip(fn.names, tensors, strict=True)):
                if name in wrt and ctx.needs_input_grad[4 + i]:
                    d_inputs[i] = _tensor(result.hvp[name], tensor.dtype, tensor.device)
        if torch.is_grad_enabled():  # create_graph: what these depend on, for a clear third order error
            depends = [t for t in (grad_output, *tensors, *cotangents) if t.requires_grad]
            if depends:
                d_output = None if d_output is None else _no_third_order(d_output, depends)
                d_inputs = [None if d is None else _no_third_order(d, depends) for d in d_inputs]
        return (None, None, None, d_output, *d_inputs)


def _no_third_order(derivative: torch.Tensor, depends: Sequence[torch.Tensor]) -> torch.Tensor:
    out: torch.Tensor = _ThirdOrder.apply(derivative, *depends)  # type: ignore[no-untyped-call]
    return out


class _ThirdOrder(torch.autograd.Function):
    """A second derivative, as it depends on the inputs, the cotangents and the tangents; its
    backward (a third derivative) is refused, rather than silently taken as zero."""

    @staticmethod
    def forward(ctx: Any, derivative: torch.Tensor, *depends: torch.Tensor) -> torch.Tensor:
        return derivative.clone()

    @staticmethod
    def backward(ctx: Any, *_: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        raise ThirdOrderError(
            "gradient_client.torch.remote differentiates twice at most: "
            "a third derivative of a remote formula is not available"
        )
