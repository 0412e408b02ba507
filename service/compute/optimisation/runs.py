"""What the optimisation engine runs and reports: the objective, the schedule, and the runs'
results, held as tensors (one group per optimizer, one row per start).

The variable may have any shape with at least one dimension (a vector [d], a weight matrix
[m, n], ...). The engine holds each start as one flattened row; what it reports (a ``Run``'s
points, ``RunGroup.points``) has the variable's own shape again."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

StopReason = Literal["max_steps", "tolerance", "diverged", "deadline"]
STOP_REASONS: tuple[StopReason, ...] = ("max_steps", "tolerance", "diverged", "deadline")
STOP_MAX_STEPS, STOP_TOLERANCE, STOP_DIVERGED, STOP_DEADLINE = range(4)
"""The codes of STOP_REASONS, as RunGroup.stopped holds them."""


@dataclass
class Trajectory:
    step: list[int] = field(default_factory=list)
    x: list[torch.Tensor] = field(default_factory=list)
    value: list[float] = field(default_factory=list)


@dataclass
class Run:
    """One run, as reported: where it started and ended, and the path between."""

    start: int
    optimizer: int
    x0: torch.Tensor
    x: torch.Tensor
    value: float
    grad_norm: float
    steps: int
    stopped: StopReason
    trajectory: Trajectory


@dataclass(frozen=True)
class Record:
    """Every run's point at a recorded step, and which runs were still going then."""

    step: int
    x: torch.Tensor
    value: torch.Tensor
    active: torch.Tensor


@dataclass
class RunGroup:
    """One optimizer's runs, one row per start, held as tensors (millions of runs stay cheap).

    While the runs go, each row holds the run's state at its last look; once it stops, its end.
    """

    optimizer: int
    x0: torch.Tensor
    x: torch.Tensor
    value: torch.Tensor
    grad_norm: torch.Tensor
    steps: torch.Tensor
    stopped: torch.Tensor
    """Indices into STOP_REASONS."""
    records: list[Record] = field(default_factory=list)
    first_start: int = 0
    """The start of the first row (a group of one start, while it runs, is any start)."""
    shape: tuple[int, ...] = ()
    """The variable's shape: each row of ``x0``, ``x`` and the records is one point, flattened."""

    @classmethod
    def starting(cls, optimizer: int, x0: torch.Tensor, shape: tuple[int, ...] | None = None) -> RunGroup:
        """Rows ``x0`` [runs, D] not yet stepped, of a variable of ``shape`` (default [D])."""
        count, device = len(x0), x0.device
        nan = torch.full((count,), math.nan, dtype=x0.dtype, device=device)
        return cls(
            optimizer,
            x0.detach().clone(),
            x0.detach().clone(),
            nan,
            nan.clone(),
            torch.zeros(count, dtype=torch.long, device=device),
            torch.full((count,), STOP_MAX_STEPS, dtype=torch.long, device=device),
            shape=tuple(x0.shape[1:]) if shape is None else shape,
        )

    @property
    def points(self) -> torch.Tensor:
        """Each run's current point (its end, once it has stopped): [runs, *shape], a view of ``x``."""
        return self.x.reshape(len(self.x), *self.shape)

    def _point(self, flat: torch.Tensor) -> torch.Tensor:
        """One flattened point [D] in the variable's shape (a vector's as it is)."""
        return flat if len(self.shape) == 1 else flat.reshape(self.shape)

    @classmethod
    def joined(cls, groups: Sequence[RunGroup]) -> RunGroup:
        """The rows of several groups of the same optimizer, in order (trajectories aligned by step)."""
        if len(groups) == 1:
            return groups[0]
        joined = cls(
            groups[0].optimizer,
            *(torch.cat([getattr(group, name) for group in groups]) for name in _ROW_FIELDS),  # type: ignore[arg-type]
        )
        joined.shape = groups[0].shape
        steps = sorted({record.step for group in groups for record in group.records})
        for step in steps:
            parts = [_record_at(group, step) for group in groups]
            joined.records.append(
                Record(step, *(torch.cat([getattr(part, name) for part in parts]) for name in ("x", "value", "active")))
            )
        return joined

    def reasons(self) -> list[StopReason]:
        return [STOP_REASONS[code] for code in self.stopped.tolist()]

    def run(self, row: int, record_every: int) -> Run:
        """Row ``row`` as one Run (its points in the variable's shape): its recorded points, then
        its end if that was not recorded."""
        point = self._point
        trajectory = Trajectory()
        for record in self.records:
            if bool(record.active[row]):
                trajectory.step.append(record.step)
                trajectory.x.append(point(record.x[row]))
                trajectory.value.append(float(record.value[row]))
        steps = int(self.steps[row])
        if self.records and steps % record_every != 0:
            trajectory.step.append(steps)
            trajectory.x.append(point(self.x[row]))
            trajectory.value.append(float(self.value[row]))
        return Run(
            row,
            self.optimizer,
            point(self.x0[row]),
            point(self.x[row]),
            float(self.value[row]),
            float(self.grad_norm[row]),
            steps,
            STOP_REASONS[int(self.stopped[row])],
            trajectory,
        )


_ROW_FIELDS = ("x0", "x", "value", "grad_norm", "steps", "stopped")


def _record_at(group: RunGroup, step: int) -> Record:
    for record in group.records:
        if record.step == step:
            return record
    inactive = torch.zeros(len(group.x), dtype=torch.bool, device=group.x.device)
    return Record(step, group.x, group.value, inactive)


@dataclass(frozen=True)
class Objective:
    """What to minimise: ``fn`` maps points of the variable's shape to their values, [N, *shape]
    to [N] when ``batched``, else one point [*shape] to a scalar."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    batched: bool
    key: Hashable | None = None
    """Names the function (a catalog entry, or a formula with its constants): objectives with
    the same key share their traced graphs across requests. None: never shared."""

    def over_rows(self, shape: tuple[int, ...]) -> Objective:
        """The same objective of flattened points (rows [..., D], reshaped to [..., *shape]
        before ``fn`` sees them), as the engine holds them; itself for a vector variable."""
        if len(shape) == 1:
            return self
        fn = self.fn
        if self.batched:

            def rows(x: torch.Tensor) -> torch.Tensor:
                return fn(x.reshape(*x.shape[:-1], *shape))

        else:

            def rows(x: torch.Tensor) -> torch.Tensor:
                return fn(x.reshape(shape))

        return Objective(rows, self.batched, None if self.key is None else (self.key, shape))


Progress = Callable[[int, RunGroup], None]


@dataclass(frozen=True)
class Schedule:
    """How long runs go and what they report: ``deadline`` is a ``time.monotonic()`` instant;
    ``on_progress(step, group)`` is called at every recorded step of each group of runs."""

    steps: int
    record_every: int
    tolerance: float | None = None
    deadline: float | None = None
    on_progress: Progress | None = None
    cancelled: Callable[[], bool] | None = None
    """Checked with the deadline: once true, the runs stop where they are (a client went away)."""
    trajectories: bool = True
    """Record trajectory points (a summary report does without them)."""

    def out_of_time(self) -> bool:
        late = self.deadline is not None and time.monotonic() > self.deadline
        return late or (self.cancelled is not None and self.cancelled())


@dataclass
class Outcome:
    """Every run, as one group per optimizer (rows in start order)."""

    groups: list[RunGroup]
    record_every: int

    def runs(self) -> list[Run]:
        """One Run per start and optimizer, ordered by start then optimizer."""
        count = len(self.groups[0].x) if self.groups else 0
        runs = []
        for row in range(count):
            for group in self.groups:
                runs.append(group.run(row, self.record_every))
        return runs
