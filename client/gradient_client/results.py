"""What the client's methods return: the service's response bodies with numpy arrays in place of
wire tensors (``None`` where the service answered ``null``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gradient_client._wire import Array, TensorShape, from_wire, number, optional


@dataclass(frozen=True)
class Meta:
    """Where and how the service computed: ``device`` used, ``dtype``, ``elapsed_ms``."""

    device: str
    dtype: str
    elapsed_ms: float

    @classmethod
    def parse(cls, body: Any) -> Meta:
        return cls(str(body["device"]), str(body["dtype"]), float(body["elapsed_ms"]))


@dataclass(frozen=True, eq=False)
class ActivationResult:
    output: Array
    grad: Array
    grad2: Array | None
    jacobian: Array | None
    jvp: Array | None
    meta: Meta

    @classmethod
    def parse(cls, body: Any) -> ActivationResult:
        meta = Meta.parse(body["meta"])
        d = meta.dtype
        return cls(
            from_wire(body["output"], d),
            from_wire(body["grad"], d),
            optional(body.get("grad2"), d),
            optional(body.get("jacobian"), d),
            optional(body.get("jvp"), d),
            meta,
        )


@dataclass(frozen=True, eq=False)
class LossResult:
    loss: Array
    grad: dict[str, Array | None]
    """``input``, ``target`` and ``weight``: ``None`` where torch cannot differentiate, or where
    nothing was sent."""
    meta: Meta

    @classmethod
    def parse(cls, body: Any) -> LossResult:
        meta = Meta.parse(body["meta"])
        grads = {name: optional(value, meta.dtype) for name, value in body["grad"].items()}
        return cls(from_wire(body["loss"], meta.dtype), grads, meta)


@dataclass(frozen=True, eq=False)
class DifferentiateResult:
    value: Array
    grad: dict[str, Array] | None
    """Per ``wrt`` input: the vector-Jacobian product with ``grad_output``."""
    jacobian: dict[str, Array] | None
    """Per ``wrt`` input: shape ``value.shape + input.shape``."""
    hessian: dict[str, dict[str, Array]] | None
    """Blocks per pair of inputs: ``hessian["x"]["y"]``."""
    jvp: Array | None
    """The derivative of the value along ``tangents``, the value's shape."""
    hvp: dict[str, Array] | None
    """Per ``wrt`` input: the Hessian times the ``tangents``."""
    cost: dict[str, int] | None
    """``None``: only a dry run estimates (see :class:`DryRunResult`)."""
    meta: Meta

    @classmethod
    def parse(cls, body: Any) -> DifferentiateResult:
        meta = Meta.parse(body["meta"])
        return cls(**_derivatives(body, lambda value: from_wire(value, meta.dtype)), cost=None, meta=meta)


@dataclass(frozen=True, eq=False)
class DryRunResult:
    """``differentiate(..., dry_run=True)``: every result's :class:`TensorShape`, and the estimated
    ``cost``, computed from shapes alone."""

    value: TensorShape
    grad: dict[str, TensorShape] | None
    jacobian: dict[str, TensorShape] | None
    hessian: dict[str, dict[str, TensorShape]] | None
    jvp: TensorShape | None
    hvp: dict[str, TensorShape] | None
    cost: dict[str, int]
    """``flops``: the estimated floating-point work; ``bytes``: the peak of the tensors alive at once."""
    meta: Meta

    @classmethod
    def parse(cls, body: Any) -> DryRunResult:
        cost = {key: int(value) for key, value in body["cost"].items()}
        return cls(**_derivatives(body, TensorShape.parse), cost=cost, meta=Meta.parse(body["meta"]))


def _derivatives(body: Any, read: Callable[[Any], Any]) -> dict[str, Any]:
    """A differentiation's results, each tensor read by ``read``."""

    def each(tensors: Any) -> dict[str, Any] | None:
        return None if tensors is None else {name: read(tensor) for name, tensor in tensors.items()}

    hessian = body.get("hessian")
    return {
        "value": read(body["value"]),
        "grad": each(body.get("grad")),
        "jacobian": each(body.get("jacobian")),
        "hessian": None if hessian is None else {row: each(blocks) or {} for row, blocks in hessian.items()},
        "jvp": None if body.get("jvp") is None else read(body["jvp"]),
        "hvp": each(body.get("hvp")),
    }


@dataclass(frozen=True, eq=False)
class Trajectory:
    step: Array
    """The recorded steps, int64 ``[k]``."""
    x: Array
    """The points at those steps, ``[k, *shape]``."""
    value: Array
    """The values at those steps, ``[k]``."""


@dataclass(frozen=True, eq=False)
class NearestMinimum:
    x: Array
    value: float
    distance: float


@dataclass(frozen=True, eq=False)
class Run:
    """One optimisation run: one start with one optimizer."""

    start: int
    optimizer: dict[str, Any]
    """The optimizer's ``name`` and every hyper-parameter it ran with."""
    x0: Array
    x: Array
    value: float
    grad_norm: float
    steps: int
    stopped: Literal["max_steps", "tolerance", "diverged", "deadline"]
    trajectory: Trajectory
    nearest_minimum: NearestMinimum | None

    @classmethod
    def parse(cls, body: Any, dtype: str) -> Run:
        x = from_wire(body["x"], dtype)
        points = [from_wire(point, dtype) for point in body["trajectory"]["x"]]
        trajectory = Trajectory(
            np.array(body["trajectory"]["step"], dtype=np.int64),
            np.stack(points) if points else np.empty((0, *x.shape), dtype=x.dtype),
            np.array([number(value) for value in body["trajectory"]["value"]], dtype=dtype),
        )
        nearest = body.get("nearest_minimum")
        return cls(
            int(body["start"]),
            dict(body["optimizer"]),
            from_wire(body["x0"], dtype),
            x,
            number(body["value"]),
            number(body["grad_norm"]),
            int(body["steps"]),
            body["stopped"],
            trajectory,
            None
            if nearest is None
            else NearestMinimum(
                np.array(nearest["x"], dtype=dtype), number(nearest["value"]), number(nearest["distance"])
            ),
        )


@dataclass(frozen=True, eq=False)
class Basin:
    """A known minimum, and how many runs ended within ``reach_tolerance`` of it."""

    x: Array
    value: float
    count: int


@dataclass(frozen=True, eq=False)
class Summary:
    """``report="summary"``: row ``i`` is start ``i // k`` with the ``i % k``-th of the ``k``
    ``optimizers``."""

    optimizers: list[str]
    x: Array
    """Final points ``[runs, *shape]``."""
    value: Array
    """Final values ``[runs]``."""
    steps: Array
    """Steps taken, int64 ``[runs]``."""
    stopped: dict[str, int]
    minima: list[Basin] | None

    @classmethod
    def parse(cls, body: Any, dtype: str) -> Summary:
        minima = body.get("minima")
        return cls(
            list(body["optimizers"]),
            from_wire(body["x"], dtype),
            from_wire(body["value"], dtype),
            from_wire(body["steps"], "int64"),
            {key: int(value) for key, value in body["stopped"].items()},
            None
            if minima is None
            else [Basin(np.array(b["x"], dtype=dtype), number(b["value"]), int(b["count"])) for b in minima],
        )


@dataclass(frozen=True, eq=False)
class OptimizeResult:
    runs: list[Run] | None
    """With ``report="runs"``: one per start and optimizer."""
    summary: Summary | None
    """With ``report="summary"``."""
    meta: Meta

    @classmethod
    def parse(cls, body: Any) -> OptimizeResult:
        meta = Meta.parse(body["meta"])
        runs = body.get("runs")
        summary = body.get("summary")
        return cls(
            None if runs is None else [Run.parse(run, meta.dtype) for run in runs],
            None if summary is None else Summary.parse(summary, meta.dtype),
            meta,
        )


@dataclass(frozen=True, eq=False)
class ProgressRun:
    """One run's state in a progress event."""

    start: int
    optimizer: str
    optimizer_index: int
    """The optimizer's place in the request's list (tells apart two settings of one optimizer)."""
    x: Array
    value: float


@dataclass(frozen=True, eq=False)
class ProgressEvent:
    """A streamed optimisation's progress: every run's state at ``step``."""

    step: int
    runs: list[ProgressRun]
    kind: Literal["progress"] = "progress"

    @classmethod
    def parse(cls, body: Any, dtype: str) -> ProgressEvent:
        runs = [
            ProgressRun(
                int(run["start"]),
                str(run["optimizer"]),
                int(run["optimizer_index"]),
                from_wire(run["x"], dtype),
                number(run["value"]),
            )
            for run in body["runs"]
        ]
        return cls(int(body["step"]), runs)


@dataclass(frozen=True, eq=False)
class ResultEvent:
    """A streamed optimisation's last event: its result, as ``optimize`` returns it."""

    result: OptimizeResult
    kind: Literal["result"] = "result"


StreamEvent = ProgressEvent | ResultEvent
"""What ``optimize_stream`` yields; ``event.kind`` tells which."""


@dataclass(frozen=True, eq=False)
class LandscapeResult:
    x: Array
    """The grid's x coordinates ``[nx]``."""
    y: Array
    """The grid's y coordinates ``[ny]``."""
    z: Array
    """Values ``[ny, nx]``."""
    grad: Array | None
    """Gradients ``[ny, nx, 2]``, with ``gradient=True``."""
    meta: Meta

    @classmethod
    def parse(cls, body: Any) -> LandscapeResult:
        meta = Meta.parse(body["meta"])
        d = meta.dtype
        return cls(
            from_wire(body["x"], d), from_wire(body["y"], d), from_wire(body["z"], d), optional(body["grad"], d), meta
        )
