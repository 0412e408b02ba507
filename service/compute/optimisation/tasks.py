"""The optimisation endpoints' work as plain typed functions, free of HTTP: the objective a
request names or writes, the checks of its size against the limits, the runs' nearest known
minima, the summary of many runs, and the landscape grid. The routes decode, call, encode.

The variable has a shape of its own, with at least one dimension: a point [d], a weight matrix
[m, n], ... The starts are [N, *shape], and every point reported (a run's ends and trajectory,
the nearest known minimum, a summary's final points and minima) has that shape. A formula sees
the variable in its shape; a catalog objective is a function of a vector, so a fixed-dimension
one takes a point [d] alone, and one of any dimension takes any shape as its flattened vector
(row-major), its minima reported in the variable's shape."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from service.compute.expressions.language import Limits, compile_program
from service.compute.optimisation import STOP_REASONS, Objective, Outcome, Schedule, engine
from service.compute.optimisation.compiled import ChunkCompiler
from service.compute.optimisation.objectives import OBJECTIVES, ObjectiveSpec
from service.compute.optimisation.optimizers import OptimizerSpec
from service.compute.runtime import torch_errors
from service.errors import DeadlineExceeded, InvalidInput, check_limit

Optimizers = Sequence[tuple[OptimizerSpec, Mapping[str, Any]]]
"""The optimizers of a request, each with its hyper-parameters."""


Decode = Callable[[Any, str], torch.Tensor]
"""Turns a wire tensor into a torch one, naming where it came from (the request's codec)."""


@dataclass(frozen=True)
class Formula:
    """An objective written in the formula language: ``expression`` of ``variable``, with
    ``inputs`` (wire tensors, decoded by ``decode`` once the formula has compiled) held constant."""

    expression: str
    variable: str
    inputs: Mapping[str, Any]
    decode: Decode


@dataclass(frozen=True)
class Resolved:
    """The engine's objective, and its catalog entry (None for a formula)."""

    objective: Objective
    entry: ObjectiveSpec | None


def resolve_objective(
    chosen: str | Formula,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    limits: Limits,
    budget: int,
) -> Resolved:
    """A catalog objective by name, of a variable of ``shape`` (refused where the objective
    cannot take it), or a formula compiled to a scalar function of its variable within
    ``budget`` elements."""
    if isinstance(chosen, str):
        entry = OBJECTIVES.get(chosen)
        return Resolved(_catalog_objective(entry, shape), entry)
    if chosen.variable in chosen.inputs:
        raise InvalidInput(f"'{chosen.variable}' is the variable; it cannot also be an input.")
    names = frozenset({*chosen.inputs, chosen.variable})
    program = compile_program(chosen.expression, names, dtype, device, limits, budget)
    constants = {name: chosen.decode(value, f"objective.inputs.{name}") for name, value in chosen.inputs.items()}
    variable = chosen.variable
    key = ("formula", chosen.expression, variable, *(_fingerprint(name, value) for name, value in constants.items()))

    def fn(x: torch.Tensor) -> torch.Tensor:
        value = program({**constants, variable: x})
        if value.numel() != 1:
            raise InvalidInput(
                f"The objective must be a scalar, but has shape {list(value.shape)}.", error_type="not_scalar"
            )
        return value.reshape(())

    return Resolved(Objective(fn, batched=False, key=key), None)


def _fingerprint(name: str, value: torch.Tensor) -> tuple[str, str, tuple[int, ...], str]:
    """A formula's constant input as part of its key: its name, dtype, shape and contents."""
    digest = hashlib.sha256(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return name, str(value.dtype), tuple(value.shape), digest.hexdigest()


def _catalog_objective(entry: ObjectiveSpec, shape: tuple[int, ...]) -> Objective:
    """``entry``'s function of a variable of ``shape``: a fixed-dimension objective takes a
    point [d] alone; one of any dimension takes any shape, as its flattened vector."""
    if entry.dimension is not None and shape != (entry.dimension,):
        if len(shape) == 1:
            message = f"{entry.name} is {entry.dimension}-dimensional, but the starts are {shape[0]}-dimensional."
        else:
            message = (
                f"{entry.name} is {entry.dimension}-dimensional: its starts must be points of shape "
                f"[{entry.dimension}], not {list(shape)}."
            )
        raise InvalidInput(message, error_type="shape_mismatch")
    if len(shape) == 1:
        return Objective(entry.fn, batched=True, key=("catalog", entry.name))
    fn, dims = entry.fn, len(shape)

    def flattened(x: torch.Tensor) -> torch.Tensor:
        return fn(x.flatten(start_dim=x.dim() - dims))

    return Objective(flattened, batched=True, key=("catalog", entry.name, shape))


def starts_of(x0: Any, starts: Any, decode: Decode) -> torch.Tensor:
    """The [N, *shape] starts of a request that gives one start ``x0`` (of the variable's
    shape, with at least one dimension) or several ``starts`` (wire tensors, decoded once one of
    them is known to be given)."""
    if (x0 is None) == (starts is None):
        raise InvalidInput("Give exactly one of x0 (one start) and starts (several).")
    if x0 is not None:
        point = decode(x0, "x0")
        if point.dim() == 0 or not point.numel():
            raise InvalidInput(
                f"x0 must be a point with at least one dimension and one element ([d], [m, n], ...), "
                f"not {list(point.shape)}.",
                error_type="shape_mismatch",
            )
        return point.unsqueeze(0)
    rows = decode(starts, "starts")
    if rows.dim() < 2 or not rows.numel():
        raise InvalidInput(
            f"starts must have shape [N, *shape] (N points, each with at least one dimension: [N, d], "
            f"[N, m, n], ...), not {list(rows.shape)}.",
            error_type="shape_mismatch",
        )
    return rows


@dataclass(frozen=True)
class RunLimits:
    """The configured caps on one optimisation request."""

    max_steps: int
    max_elements: int
    max_trajectory_points: int


def check_runs(
    starts: torch.Tensor, optimizers: Optimizers, steps: int, record_every: int | None, limits: RunLimits
) -> None:
    """Refuse, before any step, runs past the limits: steps x runs (an lbfgs step evaluates the
    objective up to max_iter times), the optimizer state (lbfgs keeps 2 x history_size vectors),
    and with ``record_every`` the trajectory points and their elements (``starts``: [N, *shape])."""
    count = len(starts)
    dimension = starts[0].numel()
    work = sum(steps * count * hyper.get("max_iter", 1) for _, hyper in optimizers)
    check_limit(work, limits.max_steps, "steps x runs", "too_many_steps")
    history = max((hyper.get("history_size", 0) * 2 for _, hyper in optimizers), default=0)
    check_limit(history * count * dimension, limits.max_elements, "elements of optimizer state", "state_too_large")
    if record_every is not None:
        points = count * len(optimizers) * (steps // record_every + 2)
        check_limit(points, limits.max_trajectory_points, "trajectory points", "trajectory_too_long")
        check_limit(points * dimension, limits.max_elements, "trajectory elements", "trajectory_too_long")


def run(
    resolved: Resolved,
    starts: torch.Tensor,
    optimizers: Optimizers,
    schedule: Schedule,
    compiler: ChunkCompiler | None = None,
    *,
    budget_s: float | None = None,
    step_machine: bool = True,
) -> Outcome:
    """Every run; torch's refusals are the caller's 400 (see ``torch_errors``). With
    ``budget_s`` (the request's time budget), runs that the deadline cut short are a 504
    instead of a partial result (a stream reports them, with what they reached)."""
    with torch_errors("the optimisation"):
        outcome = engine.optimize(resolved.objective, starts, optimizers, schedule, compiler, step_machine)
    if budget_s is not None and any("deadline" in group.reasons() for group in outcome.groups):
        done = sum(int(group.steps.sum()) for group in outcome.groups)
        raise DeadlineExceeded(
            f"The request's time budget of {budget_s:g} s ran out after {done} steps in all; "
            "ask for fewer steps, or stream the run (Accept: text/event-stream) to keep what it reached."
        )
    return outcome


Point = list[Any]
"""A point as nested lists of numbers, in the variable's shape."""


def shaped(point: list[float], shape: Sequence[int]) -> Point:
    """A flat list of numbers as nested lists of ``shape`` (row-major); itself for a vector."""
    nested: list[Any] = point
    for size in reversed(shape[1:]):
        nested = [nested[start : start + size] for start in range(0, len(nested), size)]
    return nested


@dataclass(frozen=True)
class NearestMinimum:
    x: Point
    value: float
    distance: float


def nearest_minimum(entry: ObjectiveSpec | None, x: torch.Tensor) -> NearestMinimum | None:
    """The known minimum of a catalog objective closest (Euclidean, over every element) to
    ``x``, in ``x``'s shape; None for a formula."""
    if entry is None:
        return None
    point = x.reshape(-1).tolist()
    distance, closest, value = min((math.dist(point, known), known, value) for known, value in entry.minima(len(point)))
    return NearestMinimum(shaped(closest, x.shape), value, distance)


@dataclass(frozen=True)
class Basin:
    """A known minimum and how many runs ended within reach of it (and nearer it than any other)."""

    x: Point
    value: float
    count: int


@dataclass(frozen=True)
class Summary:
    """Many runs as tensors: row ``i`` is the run of start ``i // k`` with the ``i % k``-th of the
    ``k`` optimizers; ``x`` is [runs, *shape]."""

    optimizers: list[str]
    x: torch.Tensor
    value: torch.Tensor
    steps: torch.Tensor
    stopped: dict[str, int]
    minima: list[Basin] | None


def summarize(outcome: Outcome, optimizers: Optimizers, entry: ObjectiveSpec | None, reach: float) -> Summary:
    """Final points, values and step counts, the count of each stop reason, and the basins."""
    groups = outcome.groups

    def interleaved(tensors: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(tensors, dim=1)
        return stacked.reshape(-1, *stacked.shape[2:])

    points = interleaved([group.x for group in groups])  # flattened: [runs, D]
    shape = groups[0].shape
    codes = interleaved([group.stopped for group in groups])
    tally = torch.bincount(codes, minlength=len(STOP_REASONS)).tolist()
    stopped: dict[str, int] = {reason: amount for reason, amount in zip(STOP_REASONS, tally, strict=True) if amount}
    basins = None
    if entry is not None:
        known = entry.minima(points.shape[1])
        targets = torch.tensor([x for x, _ in known], dtype=points.dtype, device=points.device)
        distances = torch.cdist(points, targets)
        closest = distances.argmin(dim=1)
        reached = distances.min(dim=1).values <= reach
        basins = [
            Basin(shaped(x, shape), value, int(((closest == index) & reached).sum()))
            for index, (x, value) in enumerate(known)
        ]
    return Summary(
        [optimizers[group.optimizer][0].name for group in groups],
        points.reshape(len(points), *shape),
        interleaved([group.value for group in groups]),
        interleaved([group.steps for group in groups]),
        stopped,
        basins,
    )


@dataclass(frozen=True)
class Grid:
    """A 2-D grid: ``x_range`` and ``y_range`` as (lo, hi), and ``nx`` by ``ny`` points."""

    x_range: tuple[float, float]
    y_range: tuple[float, float]
    nx: int
    ny: int

    def check(self, max_points: int) -> None:
        if self.nx < 2 or self.ny < 2:
            raise InvalidInput("resolution must be at least 2 points per axis.")
        for name, (lo, hi) in (("x_range", self.x_range), ("y_range", self.y_range)):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise InvalidInput(f"{name} must be [lo, hi] with finite lo < hi.")
        check_limit(self.nx * self.ny, max_points, "grid points", "grid_too_large")


@dataclass(frozen=True)
class Landscape:
    """Values ``z`` [ny, nx] (and gradients [ny, nx, 2]) at the points of axes ``x`` and ``y``."""

    x: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor
    grad: torch.Tensor | None


def landscape(objective: Objective, grid: Grid, gradient: bool, dtype: torch.dtype, device: torch.device) -> Landscape:
    """The objective sampled on ``grid``, with its gradient field if ``gradient``."""
    xs = torch.linspace(*grid.x_range, grid.nx, dtype=dtype, device=device)
    ys = torch.linspace(*grid.y_range, grid.ny, dtype=dtype, device=device)
    points = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).requires_grad_(gradient)
    with torch_errors("the landscape"), torch.set_grad_enabled(gradient):
        if objective.batched:
            z = objective.fn(points)
        else:  # one vmap over the flattened grid (nested vmaps trip over some losses)
            z = torch.func.vmap(objective.fn)(points.reshape(-1, 2)).reshape(grid.ny, grid.nx)
        grad = None
        if gradient:
            (grad,) = torch.autograd.grad(z.sum(), points, allow_unused=True, materialize_grads=True)
    return Landscape(xs, ys, z, grad)
