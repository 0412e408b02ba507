"""Values and derivatives of a compiled expression w.r.t. the inputs the request names, at one
point or at a batch of points."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from service.compute.autodiff import check_cotangent, hvps, value_and_jvp, value_and_vjp_many
from service.compute.budgets import META, Cost, estimate
from service.compute.expressions.language import Limits, Program, compile_program
from service.compute.runtime import torch_errors
from service.errors import InvalidInput, check_limit

Derivative = Literal["grad", "jacobian", "hessian", "jvp", "hvp"]
TensorMap = dict[str, torch.Tensor]

# torch's own, harmless: the batching rules of some losses (mse_loss under vmap, for a batch of
# points) resize their outputs, which torch warns is deprecated; the values are right (tested).
warnings.filterwarnings("ignore", "An output with one or more elements was resized", UserWarning)


@dataclass(frozen=True)
class Derivatives:
    value: torch.Tensor
    grad: TensorMap | None = None
    jacobian: TensorMap | None = None
    hessian: dict[str, TensorMap] | None = None
    jvp: torch.Tensor | None = None
    hvp: TensorMap | None = None


@dataclass(frozen=True)
class Points:
    """How the program is evaluated: the inputs it differentiates (``names``, their tensors
    ``xs``), the rest held constant, and, for a batch, how many points there are (``size``)
    and which constants carry the batch dimension."""

    program: Program
    names: tuple[str, ...]
    xs: tuple[torch.Tensor, ...]
    constants: TensorMap
    size: int | None
    batched: frozenset[str]

    def at_point(self, *values: torch.Tensor) -> torch.Tensor:
        """The program at one point: the differentiated values, then the constants in order."""
        wrt = dict(zip(self.names, values, strict=False))
        constants = dict(zip(self.constants, values[len(self.names) :], strict=True))
        return self.program({**constants, **wrt})

    def in_dims(self) -> tuple[int | None, ...]:
        return (0,) * len(self.names) + tuple(0 if name in self.batched else None for name in self.constants)

    def per_point(self, transform: Callable[..., Callable[..., torch.Tensor]]) -> Callable[..., torch.Tensor]:
        """``transform(at_point)``, evaluated at every point: vmapped over a batch."""
        point_fn = transform(self.at_point)
        if self.size is None:
            return lambda *xs: point_fn(*xs, *self.constants.values())
        batched = torch.func.vmap(point_fn, in_dims=self.in_dims())
        return lambda *xs: batched(*xs, *self.constants.values())

    def point_numel(self, x: torch.Tensor) -> int:
        """Elements of one point of ``x``."""
        return x.numel() if self.size is None else x.shape[1:].numel()


def differentiate(
    program: Program,
    inputs: Mapping[str, torch.Tensor],
    wrt: Iterable[str] | None,
    wanted: Iterable[Derivative],
    *,
    grad_output: torch.Tensor | None = None,
    tangents: Mapping[str, torch.Tensor] | None = None,
    batch: Sequence[str] | None = None,
    max_entries: int,
) -> Derivatives:
    """The program's value and the derivatives asked for, w.r.t. ``wrt`` (default: every
    floating input). ``tangents`` are the directions of ``jvp`` and ``hvp``. With ``batch``
    (input names with a leading batch dimension) the program is evaluated at every point alone
    (torch.func.vmap semantics) and every result gains the batch dimension, per point: the
    inputs differentiated but not batched are then shared by all points, with a derivative each.
    ``hvp`` of a value that is not a scalar is that of ``grad_output . value`` (the derivative of
    the vector-Jacobian product along the tangents: what a double backward needs)."""
    names = _wrt_names(inputs, wrt)
    wanted = set(wanted)
    size = _batch_size(inputs, batch)
    xs = tuple(inputs[name] if size is None or name in (batch or ()) else _expand(inputs[name], size) for name in names)
    points = Points(
        program,
        tuple(names),
        xs,
        {name: value for name, value in inputs.items() if name not in names},
        size,
        frozenset(batch or ()),
    )
    directions = _tangents(points, wanted, tangents)
    fn = points.per_point(lambda point_fn: point_fn)
    grads = jvp = None
    with torch_errors("the expression"):
        if "grad" in wanted:
            value, grads = value_and_vjp_many(fn, xs, grad_output)
        elif "jvp" in wanted:
            value, jvp = value_and_jvp(fn, xs, directions)
        else:
            with torch.no_grad():
                value = fn(*xs)
        check_cotangent(grad_output, value)
        if "jvp" in wanted and jvp is None:
            jvp = value_and_jvp(fn, xs, directions)[1]
        if "hessian" in wanted or ("hvp" in wanted and grad_output is None):
            _check_scalar(value, size)
        hvp = None
        if "hvp" in wanted:
            hvp = dict(zip(names, hvps(fn, xs, directions, grad_output), strict=True))
        jacobian = _jacobian(points, value, max_entries) if "jacobian" in wanted else None
        hessian = _hessian(points, max_entries) if "hessian" in wanted else None
    return Derivatives(
        value=value,
        grad=dict(zip(names, grads, strict=True)) if grads is not None else None,
        jacobian=jacobian,
        hessian=hessian,
        jvp=jvp,
        hvp=hvp,
    )


def _check_scalar(value: torch.Tensor, size: int | None) -> None:
    point_shape = value.shape if size is None else value.shape[1:]
    if point_shape.numel() != 1:
        at_each = " at each point" if size is not None else ""
        raise InvalidInput(
            f"A Hessian (or hvp) needs a scalar value, but the expression has shape {list(point_shape)}{at_each}; "
            "reduce it (sum, mean, ...), ask for the jacobian, or send a grad_output (the hvp of grad_output . value).",
            error_type="not_scalar",
        )


def _jacobian(points: Points, value: torch.Tensor, max_entries: int) -> TensorMap:
    """d value / d x per input, of shape value.shape + x.shape (per point with a batch)."""
    inputs_size = sum(points.point_numel(x) for x in points.xs)
    check_limit(value.numel() * inputs_size, max_entries, "Jacobian entries", "jacobian_too_large")
    budget = points.program.budget
    # Reverse mode runs one backward pass per output element, all at once (vmap).
    working_set = budget.peak * value.numel()
    check_limit(working_set, budget.limit, "elements of working set for the Jacobian", "jacobian_too_large")
    if not points.xs:
        return {}
    argnums = tuple(range(len(points.names)))
    blocks = points.per_point(lambda point_fn: torch.func.jacrev(point_fn, argnums=argnums))(*points.xs)
    return dict(zip(points.names, blocks, strict=True))


def _hessian(points: Points, max_entries: int) -> dict[str, TensorMap]:
    """The blocks d^2 value / dx_i dx_j, each of shape x_i.shape + x_j.shape (per point with a
    batch). Reverse over reverse (jacrev of jacrev): without a batch the program itself never
    runs under vmap."""
    inputs_size = sum(points.point_numel(x) for x in points.xs)
    check_limit(inputs_size**2 * (points.size or 1), max_entries, "Hessian entries", "hessian_too_large")
    budget = points.program.budget
    working_set = budget.peak * inputs_size
    check_limit(working_set, budget.limit, "elements of working set for the Hessian", "hessian_too_large")
    if not points.xs:
        return {}
    argnums = tuple(range(len(points.names)))

    def hessian_of(point_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def scalar(*values: torch.Tensor) -> torch.Tensor:
            return point_fn(*values).reshape(())

        return torch.func.jacrev(torch.func.jacrev(scalar, argnums=argnums), argnums=argnums)

    blocks = points.per_point(hessian_of)(*points.xs)
    return {row: dict(zip(points.names, blocks[i], strict=True)) for i, row in enumerate(points.names)}


def _wrt_names(inputs: Mapping[str, torch.Tensor], wrt: Iterable[str] | None) -> list[str]:
    if wrt is None:
        return [name for name, value in inputs.items() if value.is_floating_point()]
    names = list(wrt)
    for name in names:
        if name not in inputs:
            raise InvalidInput(f"wrt names '{name}', which is not an input.", error_type="unknown_name")
        if not inputs[name].is_floating_point():
            raise InvalidInput(f"wrt names '{name}', which holds integers.", error_type="invalid_dtype")
    if len(set(names)) != len(names):
        raise InvalidInput("wrt names an input twice.", error_type="invalid_wrt")
    return names


def _batch_size(inputs: Mapping[str, torch.Tensor], batch: Sequence[str] | None) -> int | None:
    """The number of points: the common leading size of the ``batch`` inputs (None: no batch)."""
    if not batch:
        return None
    if len(set(batch)) != len(batch):
        raise InvalidInput("batch names an input twice.", error_type="invalid_batch")
    sizes: dict[str, int] = {}
    for name in batch:
        if name not in inputs:
            raise InvalidInput(f"batch names '{name}', which is not an input.", error_type="unknown_name")
        if inputs[name].dim() == 0:
            raise InvalidInput(
                f"batch names '{name}', a single number: a batch input needs a leading batch dimension "
                "(shape [points, ...]).",
                error_type="invalid_batch",
            )
        sizes[name] = inputs[name].shape[0]
    if len(set(sizes.values())) > 1:
        raise InvalidInput(
            "The batch inputs disagree on the number of points: "
            + ", ".join(f"{name} has {size}" for name, size in sizes.items())
            + ".",
            error_type="batch_mismatch",
        )
    size = next(iter(sizes.values()))
    if size == 0:
        raise InvalidInput("The batch has no points; send at least one.", error_type="invalid_batch")
    return size


def _expand(x: torch.Tensor, size: int) -> torch.Tensor:
    """A shared input, as one copy per point, so that each point gets its own derivative (a
    real copy: backward passes write into their inputs' shapes, which a broadcast view cannot
    hold)."""
    return x.expand(size, *x.shape).contiguous()


def _tangents(
    points: Points, wanted: set[Derivative], tangents: Mapping[str, torch.Tensor] | None
) -> tuple[torch.Tensor, ...]:
    """The directions of jvp and hvp, one per differentiated input (zeros where not given)."""
    if not wanted & {"jvp", "hvp"}:
        if tangents is not None:
            raise InvalidInput(
                "tangents are the directions of jvp and hvp; add one of them to derivatives.",
                error_type="invalid_tangents",
            )
        return ()
    if tangents is None:
        raise InvalidInput(
            "jvp and hvp need tangents: {input name: direction of that input's shape}.",
            error_type="missing_tangents",
        )
    for name in tangents:
        if name not in points.names:
            raise InvalidInput(
                f"tangents names '{name}', which is not an input differentiated (see wrt).",
                error_type="unknown_name",
            )
    directions = []
    for name, x in zip(points.names, points.xs, strict=True):
        tangent = tangents.get(name)
        if tangent is None:
            directions.append(torch.zeros_like(x))
            continue
        if tangent.shape != x.shape:
            per_point = " (with batch, every tangent has the points first)" if points.size is not None else ""
            raise InvalidInput(
                f"tangents.{name} has shape {list(tangent.shape)}, but it must have {name}'s shape "
                f"{list(x.shape)}{per_point}.",
                error_type="shape_mismatch",
                where=f"tangents.{name}",
            )
        directions.append(tangent.to(x.dtype))
    return tuple(directions)


TensorType = tuple[tuple[int, ...], torch.dtype]
"""A tensor's shape and dtype."""


def tensor_type(tensor: torch.Tensor) -> TensorType:
    return tuple(tensor.shape), tensor.dtype


@dataclass(frozen=True)
class Signature:
    """A differentiation request described by shapes alone: all that its results' shapes and
    its cost depend on (hashable, so that plans are cached)."""

    expression: str
    dtype: torch.dtype
    inputs: tuple[tuple[str, TensorType], ...]
    wrt: tuple[str, ...] | None
    wanted: tuple[Derivative, ...]
    grad_output: TensorType | None
    tangents: tuple[tuple[str, TensorType], ...] | None
    batch: tuple[str, ...] | None
    max_entries: int
    max_elements: int
    limits: Limits

    @classmethod
    def of(
        cls,
        expression: str,
        dtype: torch.dtype,
        inputs: Mapping[str, torch.Tensor],
        wrt: Iterable[str] | None,
        wanted: Iterable[Derivative],
        *,
        grad_output: torch.Tensor | None = None,
        tangents: Mapping[str, torch.Tensor] | None = None,
        batch: Sequence[str] | None = None,
        max_entries: int,
        max_elements: int,
        limits: Limits,
    ) -> Signature:
        """The signature of ``differentiate``'s arguments (the program given by its source,
        dtype and limits)."""
        return cls(
            expression,
            dtype,
            _types(inputs),
            None if wrt is None else tuple(wrt),
            tuple(wanted),
            None if grad_output is None else tensor_type(grad_output),
            None if tangents is None else _types(tangents),
            None if batch is None else tuple(batch),
            max_entries,
            max_elements,
            limits,
        )


def _types(tensors: Mapping[str, torch.Tensor]) -> tuple[tuple[str, TensorType], ...]:
    return tuple((name, tensor_type(tensor)) for name, tensor in tensors.items())


@functools.lru_cache(maxsize=512)
def dry_run(signature: Signature) -> tuple[Derivatives, Cost]:
    """``differentiate`` on shapes alone (the meta device): the results' shapes and dtypes, and
    what computing them would cost. A few milliseconds, whatever the sizes; a repeated request
    costs a dictionary lookup."""
    program = compile_program(
        signature.expression,
        frozenset(name for name, _ in signature.inputs),
        signature.dtype,
        META,
        signature.limits,
        signature.max_elements,
    )
    inputs = {name: _on_meta(kind) for name, kind in signature.inputs}
    tangents = None if signature.tangents is None else {name: _on_meta(kind) for name, kind in signature.tangents}
    grad_output = None if signature.grad_output is None else _on_meta(signature.grad_output)
    held = (*inputs.values(), *(tangents or {}).values(), *([grad_output] if grad_output is not None else []))
    return estimate(
        lambda: differentiate(
            program,
            inputs,
            signature.wrt,
            signature.wanted,
            grad_output=grad_output,
            tangents=tangents,
            batch=signature.batch,
            max_entries=signature.max_entries,
        ),
        held,
    )


def _on_meta(kind: TensorType) -> torch.Tensor:
    shape, dtype = kind
    return torch.empty(shape, dtype=dtype, device=META)
