"""Test functions for optimisers, batched over leading dimensions: ``fn(x)`` with ``x`` of
shape [..., d] returns shape [...]. Each has its formula, plotting domain and known minima."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from service.compute.ops.registry import Param, Registry


@dataclass(frozen=True, eq=False)
class ObjectiveSpec:
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    formula: str
    dimension: int | None
    """The fixed dimension, or None for any d >= 1 (the start's size decides)."""
    domain: tuple[tuple[float, float], ...]
    """Per-coordinate box for plots and random starts (one pair repeated for any d)."""
    minima: Callable[[int], list[tuple[list[float], float]]]
    """Known global (and, for himmelblau, all) minima for dimension d."""
    params: tuple[Param, ...] = ()

    def box(self, d: int) -> list[tuple[float, float]]:
        return list(self.domain) if len(self.domain) == d else [self.domain[0]] * d


OBJECTIVES: Registry[ObjectiveSpec] = Registry("objective")


def _fixed(*points: tuple[list[float], float]) -> Callable[[int], list[tuple[list[float], float]]]:
    return lambda d: list(points)


def _himmelblau(x: torch.Tensor) -> torch.Tensor:
    # Exactly the seed's formula, on the last dimension.
    a, b = x[..., 0], x[..., 1]
    return (a**2 + b - 11) ** 2 + (a + b**2 - 7) ** 2


def _rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2).sum(dim=-1)


def _rastrigin(x: torch.Tensor) -> torch.Tensor:
    return 10 * x.shape[-1] + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(dim=-1)


def _ackley(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1]
    first = -20 * torch.exp(-0.2 * torch.sqrt((x**2).sum(dim=-1) / d))
    second = -torch.exp(torch.cos(2 * math.pi * x).sum(dim=-1) / d)
    return first + second + 20 + math.e


def _beale(x: torch.Tensor) -> torch.Tensor:
    a, b = x[..., 0], x[..., 1]
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


def _booth(x: torch.Tensor) -> torch.Tensor:
    a, b = x[..., 0], x[..., 1]
    return (a + 2 * b - 7) ** 2 + (2 * a + b - 5) ** 2


def _sphere(x: torch.Tensor) -> torch.Tensor:
    return (x**2).sum(dim=-1)


def _matyas(x: torch.Tensor) -> torch.Tensor:
    a, b = x[..., 0], x[..., 1]
    return 0.26 * (a**2 + b**2) - 0.48 * a * b


def _three_hump_camel(x: torch.Tensor) -> torch.Tensor:
    a, b = x[..., 0], x[..., 1]
    return 2 * a**2 - 1.05 * a**4 + a**6 / 6 + a * b + b**2


def _goldstein_price(x: torch.Tensor) -> torch.Tensor:
    a, b = x[..., 0], x[..., 1]
    first = 1 + (a + b + 1) ** 2 * (19 - 14 * a + 3 * a**2 - 14 * b + 6 * a * b + 3 * b**2)
    second = 30 + (2 * a - 3 * b) ** 2 * (18 - 32 * a + 12 * a**2 + 48 * b - 36 * a * b + 27 * b**2)
    return first * second


def _styblinski_tang(x: torch.Tensor) -> torch.Tensor:
    return (x**4 - 16 * x**2 + 5 * x).sum(dim=-1) / 2


def _mccormick(x: torch.Tensor) -> torch.Tensor:
    a, b = x[..., 0], x[..., 1]
    return torch.sin(a + b) + (a - b) ** 2 - 1.5 * a + 2.5 * b + 1


STYBLINSKI_TANG_ARGMIN = -2.903534018185960
STYBLINSKI_TANG_MIN = -39.16616570377142  # per dimension

for _objective in (
    ObjectiveSpec(
        "himmelblau",
        _himmelblau,
        "(x0^2 + x1 - 11)^2 + (x0 + x1^2 - 7)^2",
        2,
        ((-6.0, 6.0),),
        _fixed(
            ([3.0, 2.0], 0.0),
            ([-2.805118086952745, 3.131312518250573], 0.0),
            ([-3.779310253377747, -3.283185991286170], 0.0),
            ([3.584428340330492, -1.848126526964404], 0.0),
        ),
    ),
    ObjectiveSpec(
        "rosenbrock",
        _rosenbrock,
        "sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2",
        None,
        ((-2.0, 2.0),),
        lambda d: [([1.0] * d, 0.0)],
    ),
    ObjectiveSpec(
        "rastrigin",
        _rastrigin,
        "10 d + sum_i x_i^2 - 10 cos(2 pi x_i)",
        None,
        ((-5.12, 5.12),),
        lambda d: [([0.0] * d, 0.0)],
    ),
    ObjectiveSpec(
        "ackley",
        _ackley,
        "-20 exp(-0.2 sqrt(mean x^2)) - exp(mean cos(2 pi x)) + 20 + e",
        None,
        ((-5.0, 5.0),),
        lambda d: [([0.0] * d, 0.0)],
    ),
    ObjectiveSpec(
        "beale",
        _beale,
        "(1.5 - x0 + x0 x1)^2 + (2.25 - x0 + x0 x1^2)^2 + (2.625 - x0 + x0 x1^3)^2",
        2,
        ((-4.5, 4.5),),
        _fixed(([3.0, 0.5], 0.0)),
    ),
    ObjectiveSpec(
        "booth", _booth, "(x0 + 2 x1 - 7)^2 + (2 x0 + x1 - 5)^2", 2, ((-10.0, 10.0),), _fixed(([1.0, 3.0], 0.0))
    ),
    ObjectiveSpec("sphere", _sphere, "sum_i x_i^2", None, ((-5.0, 5.0),), lambda d: [([0.0] * d, 0.0)]),
    ObjectiveSpec("matyas", _matyas, "0.26 (x0^2 + x1^2) - 0.48 x0 x1", 2, ((-10.0, 10.0),), _fixed(([0.0, 0.0], 0.0))),
    ObjectiveSpec(
        "three_hump_camel",
        _three_hump_camel,
        "2 x0^2 - 1.05 x0^4 + x0^6 / 6 + x0 x1 + x1^2",
        2,
        ((-5.0, 5.0),),
        _fixed(([0.0, 0.0], 0.0)),
    ),
    ObjectiveSpec(
        "goldstein_price",
        _goldstein_price,
        "[1 + (x0 + x1 + 1)^2 (19 - 14 x0 + 3 x0^2 - 14 x1 + 6 x0 x1 + 3 x1^2)]"
        " [30 + (2 x0 - 3 x1)^2 (18 - 32 x0 + 12 x0^2 + 48 x1 - 36 x0 x1 + 27 x1^2)]",
        2,
        ((-2.0, 2.0),),
        _fixed(([0.0, -1.0], 3.0)),
    ),
    ObjectiveSpec(
        "styblinski_tang",
        _styblinski_tang,
        "sum_i (x_i^4 - 16 x_i^2 + 5 x_i) / 2",
        None,
        ((-5.0, 5.0),),
        lambda d: [([STYBLINSKI_TANG_ARGMIN] * d, STYBLINSKI_TANG_MIN * d)],
    ),
    ObjectiveSpec(
        "mccormick",
        _mccormick,
        "sin(x0 + x1) + (x0 - x1)^2 - 1.5 x0 + 2.5 x1 + 1",
        2,
        ((-1.5, 4.0), (-3.0, 4.0)),
        _fixed(([-0.5471975511965976, -1.5471975511965976], -1.913222954981037)),
    ),
):
    OBJECTIVES.register(_objective)
