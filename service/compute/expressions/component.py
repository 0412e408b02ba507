"""A saved formula as a differentiable component with one output, ``value``: its value, Jacobian,
Jacobian-vector product and vector-Jacobian product at a point, and its output's shape and dtype
from the input shapes alone. The derivatives are ``differentiate``'s, under the same cost check
as ``POST /v1/differentiate``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from service.compute.budgets import META, check_cost
from service.compute.expressions.differentiate import Derivative, Derivatives, Signature, differentiate, dry_run
from service.compute.expressions.language import Limits, Program

OUTPUT = "value"
"""The one output of a saved formula."""

Types = Mapping[str, tuple[tuple[int, ...], torch.dtype]]
"""Each input's shape and dtype."""


@dataclass(frozen=True)
class Component:
    """A compiled saved formula and the limits its calls run under."""

    expression: str
    program: Program
    dtype: torch.dtype
    """The dtype of its constants (its inputs keep their own)."""
    limits: Limits
    max_elements: int
    max_entries: int
    """Cap on Jacobian entries."""
    max_flops: int

    def output_type(self, types: Types) -> tuple[tuple[int, ...], torch.dtype]:
        """The shape and dtype of ``value`` for inputs of these ``types`` (cached, on the meta device)."""
        return output_type(self.expression, self.dtype, types, self.limits, self.max_elements)

    def apply(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self._run(inputs, (), ()).value

    def jacobian(self, inputs: Mapping[str, torch.Tensor], wrt: Sequence[str]) -> dict[str, torch.Tensor]:
        """d value / d x for each x in ``wrt``, of shape value.shape + x.shape."""
        jacobian = self._run(inputs, wrt, ("jacobian",)).jacobian
        assert jacobian is not None
        return jacobian

    def jvp(
        self, inputs: Mapping[str, torch.Tensor], wrt: Sequence[str], tangents: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """The sum over x in ``wrt`` of d value / d x . tangents[x]: of value's shape."""
        jvp = self._run(inputs, wrt, ("jvp",), tangents=tangents).jvp
        assert jvp is not None
        return jvp

    def vjp(
        self, inputs: Mapping[str, torch.Tensor], wrt: Sequence[str], cotangent: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """cotangent . d value / d x for each x in ``wrt``, of x's shape."""
        grad = self._run(inputs, wrt, ("grad",), cotangent=cotangent).grad
        assert grad is not None
        return grad

    def _run(
        self,
        inputs: Mapping[str, torch.Tensor],
        wrt: Sequence[str],
        wanted: tuple[Derivative, ...],
        *,
        tangents: Mapping[str, torch.Tensor] | None = None,
        cotangent: torch.Tensor | None = None,
    ) -> Derivatives:
        """``differentiate``, once its shape-only estimate is within the compute limits (413)."""
        signature = Signature.of(
            self.expression,
            self.dtype,
            inputs,
            wrt,
            wanted,
            grad_output=cotangent,
            tangents=tangents,
            max_entries=self.max_entries,
            max_elements=self.max_elements,
            limits=self.limits,
        )
        _, cost = dry_run(signature)
        check_cost(cost, max_flops=self.max_flops, max_elements=self.max_elements)
        return differentiate(
            self.program,
            inputs,
            wrt,
            wanted,
            grad_output=cotangent,
            tangents=tangents,
            max_entries=self.max_entries,
        )


def output_type(
    expression: str, dtype: torch.dtype, types: Types, limits: Limits, max_elements: int
) -> tuple[tuple[int, ...], torch.dtype]:
    """The shape and dtype of a formula's value for inputs of these ``types``: a dry run on the
    meta device, cached with the dry runs of every differentiation."""
    inputs = {name: torch.empty(shape, dtype=kind, device=META) for name, (shape, kind) in types.items()}
    signature = Signature.of(expression, dtype, inputs, (), (), max_entries=0, max_elements=max_elements, limits=limits)
    value = dry_run(signature)[0].value
    return tuple(value.shape), value.dtype
