"""The registries of named specs (activations, losses, optimizers, objectives) and what their
entries share: parameters (``Param``) with their bounds, cross-parameter ``Rule``s, and defaults.

An entry is data; the catalog endpoints, the request validation, the OpenAPI, the expression
language and the generated tests all read it, so a new op, optimizer or objective is one entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import torch

from service.errors import InvalidInput, NotFound

ParamValue = float | int | bool | str | tuple[float, ...]
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Param:
    """One keyword parameter of an op, with its default and the values it may take."""

    name: str
    default: ParamValue | None
    description: str = ""
    choices: tuple[str, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    """The bounds (``ge``, ``gt``, ``le``, ``lt``) of a tuple-valued parameter bind each element."""
    tensor: bool = False
    """A tensor-valued parameter (such as pos_weight), decoded like any request tensor."""

    @property
    def python_type(self) -> type:
        return type(self.default)

    def bounds(self) -> dict[str, float]:
        """The bounds a value must meet: its own, each open end closed where torch's conversion of
        a scalar refuses (an int outside int64; a float beyond float32's largest magnitude, which
        torch refuses for float32 inputs: one range for every dtype, non-finite values excluded)."""
        bounds = {key: getattr(self, key) for key in ("ge", "gt", "le", "lt") if getattr(self, key) is not None}
        if self.tensor or self.choices or self.python_type not in (int, float, tuple):
            return bounds
        low, high = INT64 if self.python_type is int else (-FLOAT32_MAX, FLOAT32_MAX)
        if not bounds.keys() & {"ge", "gt"}:
            bounds["ge"] = low
        if not bounds.keys() & {"le", "lt"}:
            bounds["le"] = high
        return bounds


@dataclass(frozen=True)
class Rule:
    """A condition on an op's params beyond each one's bounds (one param against another, or a
    gap in a range), checked with them: where it fails, a validation error naming ``param``."""

    param: str
    message: str
    """A validation error's message: no final period, as pydantic's."""
    holds: Callable[[Mapping[str, Any]], bool]

    def enforce(self, params: Mapping[str, Any]) -> None:
        """The same condition where an op is called without request validation (the expression language)."""
        if not self.holds(params):
            raise InvalidInput(self.message + ".", error_type="invalid_param", param=self.param)


def defaults(params: tuple[Param, ...]) -> dict[str, ParamValue | None]:
    return {param.name: param.default for param in params}


class NamedSpec(Protocol):
    def __hash__(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def params(self) -> tuple[Param, ...]: ...


class ParamsSpec(NamedSpec, Protocol):
    """A spec whose params a request sets: each within its bounds, all meeting the rules."""

    @property
    def rules(self) -> tuple[Rule, ...]: ...


SpecT = TypeVar("SpecT", bound=NamedSpec)


class Registry(Generic[SpecT]):
    """Named specs of one kind ("activation", "loss", ...), in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._specs: dict[str, SpecT] = {}

    def register(self, spec: SpecT) -> SpecT:
        if spec.name in self._specs:
            raise ValueError(f"{self.kind} {spec.name} is registered twice")
        self._specs[spec.name] = spec
        return spec

    def get(self, name: str) -> SpecT:
        try:
            return self._specs[name]
        except KeyError:
            raise NotFound(
                f"There is no {self.kind} named {name!r}; known: {', '.join(self._specs)}.",
                error_type=f"unknown_{self.kind}",
                known=list(self._specs),
            ) from None

    def __iter__(self) -> Iterator[SpecT]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs
