"""A remote formula as a differentiable JAX function, to first and second order in reverse mode.

``remote(client, expression, inputs=["x", "w"])`` returns a function of JAX arrays (one per name,
positional) whose value and derivatives the service computes, through ``jax.pure_callback`` (so
it works under ``jax.jit`` too) wrapped in ``jax.custom_vjp`` rules:

- the value: one request (``derivatives=[]``); a scalar value's gradient comes with it when JAX
  differentiates (``jax.grad``: one request in all);
- the pullback (``jax.vjp``, ``jax.grad``, ``jax.jacrev``): ``grad`` with the cotangent as
  ``grad_output``, one request (none for a scalar value, whose gradient came with it);
- the pullback's own pullback (reverse over reverse: ``jax.jacrev(jax.grad(f))``, or
  ``jax.test_util.check_grads(f, args, order=2, modes=["rev"])``): one request with ``hvp`` (the
  inputs' part; of ``cotangent . value``) and ``jvp`` (the cotangent's part), at the same
  cotangent; ``hvp`` alone for a scalar value. A third derivative raises
  :class:`ThirdOrderError`.

Forward mode (``jax.jvp``, ``jax.jacfwd``, and so ``jax.hessian``) is not available: JAX refuses
it for ``custom_vjp`` functions. Under ``jax.vmap`` each request carries every point at once: the batched inputs go as
the service's ``batch`` (vmap semantics), the others once, shared. The first call at new input
shapes also sends a dry run, to learn the value's shape (JAX needs it before computing);
remembered per shapes and dtypes.

The request's dtype follows the inputs and the constants: float64 when any is float64 (enable x64
in JAX; without it a float64 constant is float32, as JAX makes it), else float32. Importing this
module imports JAX; importing ``gradient_client`` does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from gradient_client import Client, DifferentiateResult
from gradient_client._adapters import ThirdOrderError, has_own_dtype, input_names, request_dtype

Derivative = Literal["grad", "jvp", "hvp"]

__all__ = ["RemoteFunction", "ThirdOrderError", "remote"]

Arrays = tuple[Any, ...]
VMAP_METHOD = "expand_dims"
"""How the callbacks batch under ``jax.vmap``: the batched operands carry leading batch axes,
the others size-1 axes there; each batch becomes one request (see ``RemoteFunction._host``)."""


def remote(
    client: Client,
    expression: str,
    inputs: Sequence[str],
    constants: Mapping[str, Any] | None = None,
    *,
    device: str | None = None,
) -> RemoteFunction:
    """The formula ``expression`` as a JAX function of the floating inputs ``inputs`` (arrays,
    passed positionally in that order), differentiable twice in reverse mode. ``constants`` are
    further inputs of the formula (concrete arrays or numbers; integer ones stay integers), sent
    with every request and never differentiated. ``device`` is where the service computes (its
    default when ``None``)."""
    return RemoteFunction(client, expression, inputs, constants, device=device)


class RemoteFunction:
    """A formula evaluated and differentiated by the service; call it with one JAX array per
    input name. See :func:`remote`."""

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
        self.constants: dict[str, Any] = {name: np.asarray(value) for name, value in (constants or {}).items()}
        self._constant_dtypes = [
            self.constants[name].dtype for name, value in (constants or {}).items() if has_own_dtype(value)
        ]  # not a Python number's, which np.asarray makes float64
        self.device = device
        self._shapes: dict[tuple[Any, ...], tuple[int, ...]] = {}
        """The value's shape per signature of the inputs (their shapes and dtypes): the only
        thing remembered between calls."""
        self._call = self._build()

    def __call__(self, *arrays: Any) -> jax.Array:
        if len(arrays) != len(self.names):
            raise TypeError(f"expected {len(self.names)} arrays ({', '.join(self.names)}), got {len(arrays)}")
        xs = tuple(jnp.asarray(a) for a in arrays)
        for name, x in zip(self.names, xs, strict=True):
            if not jnp.issubdtype(x.dtype, jnp.floating):
                raise TypeError(f"{name} must be floating, not {x.dtype} (send integers as constants)")
        value: jax.Array = self._call(*xs)
        return value

    def __repr__(self) -> str:
        return f"RemoteFunction({self.expression!r}, inputs={list(self.names)})"

    def request_dtype(self, xs: Sequence[Any]) -> str:
        """float64 when any input or constant is float64, else float32; a constant's dtype as JAX
        would make it (float32 for a float64 array, without x64)."""
        constants = (jax.dtypes.canonicalize_dtype(dtype) for dtype in self._constant_dtypes)
        return request_dtype([*(x.dtype for x in xs), *constants])

    # --- shapes ---------------------------------------------------------------------------------

    def value_shape(self, xs: Arrays) -> tuple[int, ...]:
        """The value's shape at inputs of these shapes: a dry run, once per signature."""
        key = (self.request_dtype(xs), *((tuple(x.shape), str(x.dtype)) for x in xs))
        if key not in self._shapes:
            inputs: dict[str, Any] = dict(self.constants)
            inputs.update(
                (name, np.zeros(x.shape, dtype=np.dtype(x.dtype))) for name, x in zip(self.names, xs, strict=True)
            )
            dry = self.client.differentiate(
                self.expression,
                inputs,
                wrt=[],
                derivatives=[],
                dry_run=True,
                dtype=self.request_dtype(xs),
                device=self.device,
            )
            self._shapes[key] = tuple(dry.value.shape)
        return self._shapes[key]

    # --- requests -------------------------------------------------------------------------------

    def _request(
        self,
        xs: Sequence[np.ndarray[Any, Any]],
        wrt: Sequence[str],
        derivatives: Sequence[Derivative],
        *,
        grad_output: np.ndarray[Any, Any] | None = None,
        tangents: Mapping[str, np.ndarray[Any, Any]] | None = None,
        batch: Sequence[str] | None = None,
    ) -> DifferentiateResult:
        inputs: dict[str, Any] = dict(self.constants)
        inputs.update(zip(self.names, xs, strict=True))
        return self.client.differentiate(
            self.expression,
            inputs,
            wrt=list(wrt),
            derivatives=list(derivatives),
            grad_output=grad_output,
            tangents=None if tangents is None else dict(tangents),
            batch=None if not batch else list(batch),
            dtype=self.request_dtype(xs),
            device=self.device,
        )

    def _host(
        self,
        derivatives: Sequence[Derivative],
        xs: Sequence[Any],
        grad_output: Any = None,
        tangents: Sequence[Any] | None = None,
        *,
        shapes: Sequence[tuple[int, ...]],
        value_shape: tuple[int, ...],
    ) -> _Answer:
        """One request from inside a callback. Under ``jax.vmap`` (``expand_dims``) every operand
        carries the same number of leading batch axes, of size 1 where it is not batched: their
        broadcast shape is flattened into the service's one batch axis (the batched inputs as
        ``batch``, the others sent once, shared), and the results get those axes back."""
        arrays = [np.asarray(x) for x in xs]
        g = None if grad_output is None else np.asarray(grad_output)
        us = None if tangents is None else [np.asarray(u) for u in tangents]
        depth = arrays[0].ndim - len(shapes[0])
        operands = [*arrays, *([] if g is None else [g]), *(us or [])]
        leading = tuple(np.broadcast_shapes(*(a.shape[:depth] for a in operands))) if depth else ()
        size = math.prod(leading)
        batch: list[str] = []
        if size == 1:
            sent = [a.reshape(s) for a, s in zip(arrays, shapes, strict=True)]
            if g is not None:
                g = g.reshape(value_shape)
            if us is not None:
                us = [u.reshape(s) for u, s in zip(us, shapes, strict=True)]
        else:
            batch = [name for name, a in zip(self.names, arrays, strict=True) if any(n != 1 for n in a.shape[:depth])]
            batch = batch or [self.names[0]]  # only the cotangent or tangents vary: batch one input

            def points(a: np.ndarray[Any, Any], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
                return np.broadcast_to(a, (*leading, *shape)).reshape((size, *shape))

            sent = [
                points(a, s) if name in batch else a.reshape(s)
                for name, a, s in zip(self.names, arrays, shapes, strict=True)
            ]
            if g is not None:
                g = points(g, value_shape)
            if us is not None:
                us = [points(u, s) for u, s in zip(us, shapes, strict=True)]
        result = self._request(
            sent,
            self.names if derivatives else (),
            derivatives,
            grad_output=g,
            tangents=None if us is None else dict(zip(self.names, us, strict=True)),
            batch=batch,
        )

        def back(value: np.ndarray[Any, Any], shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
            return value.reshape((*leading, *shape))

        def each(results: Mapping[str, np.ndarray[Any, Any]] | None) -> list[np.ndarray[Any, Any]] | None:
            if results is None:
                return None
            return [back(results[name], s) for name, s in zip(self.names, shapes, strict=True)]

        return _Answer(
            back(result.value, value_shape),
            each(result.grad),
            None if result.jvp is None else back(result.jvp, value_shape),
            each(result.hvp),
        )

    # --- the differentiable function ---------------------------------------------------------------

    def _build(self) -> Callable[..., jax.Array]:

        def specs(xs: Arrays) -> tuple[list[tuple[int, ...]], tuple[int, ...], Any, list[Any]]:
            shapes = [tuple(x.shape) for x in xs]
            value_shape = self.value_shape(xs)
            value_dtype = jnp.result_type(*(x.dtype for x in xs))
            return shapes, value_shape, value_dtype, [x.dtype for x in xs]

        def call_value(*xs: jax.Array) -> jax.Array:
            shapes, value_shape, value_dtype, _ = specs(xs)

            def host(*arrays: Any) -> Any:
                result = self._host([], arrays, shapes=shapes, value_shape=value_shape)
                return _array(result.value, value_dtype)

            out: jax.Array = jax.pure_callback(host, _spec(value_shape, value_dtype), *xs, vmap_method=VMAP_METHOD)
            return out

        def call_value_and_grad(*xs: jax.Array) -> tuple[jax.Array, Arrays]:
            shapes, value_shape, value_dtype, dtypes = specs(xs)

            def host(*arrays: Any) -> Any:
                result = self._host(["grad"], arrays, shapes=shapes, value_shape=value_shape)
                grads = _present(result.grad)
                return _array(result.value, value_dtype), tuple(
                    _array(g, d) for g, d in zip(grads, dtypes, strict=True)
                )

            out_specs = (
                _spec(value_shape, value_dtype),
                tuple(_spec(x.shape, x.dtype) for x in xs),
            )
            value, grads = jax.pure_callback(host, out_specs, *xs, vmap_method=VMAP_METHOD)
            return value, tuple(grads)

        def call_vjp(g: jax.Array, *xs: jax.Array) -> Arrays:
            shapes, value_shape, _, dtypes = specs(xs)

            def host(g: Any, *arrays: Any) -> Any:
                result = self._host(["grad"], arrays, g, shapes=shapes, value_shape=value_shape)
                return tuple(_array(v, d) for v, d in zip(_present(result.grad), dtypes, strict=True))

            out_specs = tuple(_spec(x.shape, x.dtype) for x in xs)
            return tuple(jax.pure_callback(host, out_specs, g, *xs, vmap_method=VMAP_METHOD))

        def call_hvp(us: Arrays, xs: Arrays, g: jax.Array | None = None) -> tuple[jax.Array | None, Arrays]:
            """``hvp`` along ``us`` of the scalar value (``g`` ``None``), or of ``g . value`` with
            ``jvp`` along ``us`` too."""
            shapes, value_shape, value_dtype, dtypes = specs(xs)
            n = len(xs)
            derivatives: list[Derivative] = ["hvp"] if g is None else ["jvp", "hvp"]

            def host(*operands: Any) -> Any:
                cotangent = None if g is None else operands[-1]
                arrays, tangents = operands[:n], operands[n : 2 * n]
                result = self._host(derivatives, arrays, cotangent, tangents, shapes=shapes, value_shape=value_shape)
                hvps = tuple(_array(v, d) for v, d in zip(_present(result.hvp), dtypes, strict=True))
                return hvps if g is None else (_array(result.jvp, value_dtype), hvps)

            hvp_specs = tuple(_spec(x.shape, x.dtype) for x in xs)
            if g is None:
                hvps = _last_order(host, hvp_specs, *xs, *us)
                return None, tuple(hvps)
            out_specs = (_spec(value_shape, value_dtype), hvp_specs)
            jvp, hvps = _last_order(host, out_specs, *xs, *us, g)
            return jvp, tuple(hvps)

        # The value. Its pullback is `vjp` (or, for a scalar, the gradient that came with it, from
        # `value_and_grad`), both differentiable once more.
        @jax.custom_vjp
        def value(*xs: jax.Array) -> jax.Array:
            return call_value(*xs)

        def value_fwd(*xs: jax.Array) -> tuple[jax.Array, tuple[Arrays, Arrays | None]]:
            if self.value_shape(xs) == ():
                out, grads = value_and_grad(*xs)
                return out, (xs, grads)
            return value(*xs), (xs, None)

        def value_bwd(residuals: tuple[Arrays, Arrays | None], g: jax.Array) -> Arrays:
            xs, grads = residuals
            if grads is not None:
                return tuple(g.astype(gr.dtype) * gr for gr in grads)
            return vjp(g, *xs)

        value.defvjp(value_fwd, value_bwd)

        # A scalar value with its gradient. Pullback: cv * grad + H . cgrads (hvp).
        @jax.custom_vjp
        def value_and_grad(*xs: jax.Array) -> tuple[jax.Array, Arrays]:
            return call_value_and_grad(*xs)

        def value_and_grad_fwd(*xs: jax.Array) -> tuple[tuple[jax.Array, Arrays], tuple[Arrays, Arrays]]:
            out = value_and_grad(*xs)
            return out, (xs, out[1])

        def value_and_grad_bwd(residuals: tuple[Arrays, Arrays], cotangents: tuple[jax.Array, Arrays]) -> Arrays:
            xs, grads = residuals
            d_value, d_grads = cotangents
            _, hvps = call_hvp(tuple(d_grads), xs)
            return tuple(d_value.astype(gr.dtype) * gr + h for gr, h in zip(grads, hvps, strict=True))

        value_and_grad.defvjp(value_and_grad_fwd, value_and_grad_bwd)

        # The vector-Jacobian product with g. Pullback along us: (J us, H(g . value) us).
        @jax.custom_vjp
        def vjp(g: jax.Array, *xs: jax.Array) -> Arrays:
            return call_vjp(g, *xs)

        def vjp_fwd(g: jax.Array, *xs: jax.Array) -> tuple[Arrays, tuple[jax.Array, Arrays]]:
            return vjp(g, *xs), (g, xs)

        def vjp_bwd(residuals: tuple[jax.Array, Arrays], us: Arrays) -> Arrays:
            g, xs = residuals
            jvp, hvps = call_hvp(tuple(us), xs, g)
            assert jvp is not None
            return (jvp.astype(g.dtype), *hvps)

        vjp.defvjp(vjp_fwd, vjp_bwd)
        return value


def _last_order(host: Callable[..., Any], specs: Any, *operands: jax.Array) -> Any:
    """``jax.pure_callback(host, ...)`` for second derivatives: differentiating them (a third
    derivative) raises a clear error rather than JAX's about callbacks and JVPs."""

    @jax.custom_vjp
    def second(*operands: jax.Array) -> Any:
        return jax.pure_callback(host, specs, *operands, vmap_method=VMAP_METHOD)

    def second_fwd(*operands: jax.Array) -> tuple[Any, None]:
        return second(*operands), None

    def second_bwd(residuals: None, cotangents: Any) -> Any:
        raise ThirdOrderError(
            "gradient_client.jax.remote differentiates twice at most: "
            "a third derivative of a remote formula is not available"
        )

    second.defvjp(second_fwd, second_bwd)
    return second(*operands)


def _spec(shape: Sequence[int], dtype: Any) -> Any:
    """``jax.ShapeDtypeStruct`` (untyped in JAX's stubs)."""
    return jax.ShapeDtypeStruct(tuple(shape), dtype)  # type: ignore[no-untyped-call]


def _array(value: Any, dtype: Any) -> np.ndarray[Any, Any]:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"expected an array from the service, got {type(value).__name__}")
    return value.astype(np.dtype(dtype), copy=False)


def _present(results: list[np.ndarray[Any, Any]] | None) -> list[np.ndarray[Any, Any]]:
    if results is None:
        raise TypeError("the service answered without a derivative asked for")
    return results


@dataclass(frozen=True, eq=False)
class _Answer:
    """A callback's results, with the batch axes of its operands."""

    value: np.ndarray[Any, Any]
    grad: list[np.ndarray[Any, Any]] | None
    jvp: np.ndarray[Any, Any] | None
    hvp: list[np.ndarray[Any, Any]] | None
