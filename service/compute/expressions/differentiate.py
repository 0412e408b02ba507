"""Values and derivatives of a compiled expression w.r.t. the inputs the request names."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from service.compute.autodiff import hessians, jacobians, value_and_vjp_many
from service.compute.expressions.language import Program
from service.compute.runtime import torch_errors
from service.errors import InvalidInput, check_limit

Derivative = Literal["grad", "jacobian", "hessian"]


@dataclass(frozen=True)
class Derivatives:
    value: torch.Tensor
    grad: dict[str, torch.Tensor] | None
    jacobian: dict[str, torch.Tensor] | None
    hessian: dict[str, dict[str, torch.Tensor]] | None


def differentiate(
    program: Program,
    inputs: Mapping[str, torch.Tensor],
    wrt: Iterable[str] | None,
    wanted: Iterable[Derivative],
    *,
    grad_output: torch.Tensor | None = None,
    max_entries: int,
) -> Derivatives:
    """The program's value and the derivatives asked for, w.r.t. ``wrt`` (default: every
    floating input)."""
    names = _wrt_names(inputs, wrt)
    wanted = set(wanted)
    constants = {name: value for name, value in inputs.items() if name not in names}

    def fn(*values: torch.Tensor) -> torch.Tensor:
        return program({**constants, **dict(zip(names, values, strict=True))})

    xs = tuple(inputs[name] for name in names)
    with torch_errors("the expression"):
        value, grads = value_and_vjp_many(fn, xs, grad_output)
        jacobian = hessian = None
        inputs_size = sum(x.numel() for x in xs)
        if "jacobian" in wanted:
            check_limit(value.numel() * inputs_size, max_entries, "Jacobian entries", "jacobian_too_large")
            # Reverse mode runs one backward pass per output element, all at once (vmap).
            working_set = program.budget.peak * value.numel()
            check_limit(
                working_set, program.budget.limit, "elements of working set for the Jacobian", "jacobian_too_large"
            )
            jacobian = dict(zip(names, jacobians(fn, xs), strict=True)) if xs else {}
        if "hessian" in wanted:
            if value.numel() != 1:
                raise InvalidInput(
                    f"A Hessian needs a scalar value, but the expression has shape {list(value.shape)}; "
                    "reduce it (sum, mean, ...) or ask for the jacobian.",
                    error_type="not_scalar",
                )
            check_limit(inputs_size**2, max_entries, "Hessian entries", "hessian_too_large")
            working_set = program.budget.peak * inputs_size
            check_limit(
                working_set, program.budget.limit, "elements of working set for the Hessian", "hessian_too_large"
            )
            blocks = hessians(lambda *values: fn(*values).reshape(()), xs) if xs else ()
            hessian = {row: dict(zip(names, blocks[i], strict=True)) for i, row in enumerate(names)}
    return Derivatives(
        value=value,
        grad=dict(zip(names, grads, strict=True)) if "grad" in wanted else None,
        jacobian=jacobian,
        hessian=hessian,
    )


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
