"""Optimisation runs: many starts and several optimizers, each run equal to an independent
torch.optim loop (zero_grad, backward, step; a closure for lbfgs) from its start.

Starts share one batched parameter per optimizer when the optimizer updates each element from
its own gradient and state alone: every row then gets exactly the update its own loop would.
The objective's value and gradient over all rows come from a graph traced once (see
``traced``; an objective written for one start is vectorised with vmap), and Adam and AdamW
step with torch's fused kernel. Where tracing fails, plain autograd evaluates the objective
(batched if it is batched over leading dimensions, else start by start); lbfgs, which
evaluates several times per step, always runs start by start with a closure. A run that stops
early is frozen: its row is restored after each step, so the other runs go on unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from service.compute.compiled import CHUNK, ChunkCompiler, CompiledChunk
from service.compute.optimizers import FusedAdam, OptimizerSpec
from service.compute.traced import TracedValueAndGrad, finite_probe, trace_value_and_grad
from service.errors import InvalidInput, LimitExceeded

logger = logging.getLogger(__name__)

StopReason = Literal["max_steps", "tolerance", "diverged", "deadline"]
STOP_REASONS: tuple[StopReason, ...] = ("max_steps", "tolerance", "diverged", "deadline")
_MAX_STEPS, _TOLERANCE, _DIVERGED, _DEADLINE = range(4)


class OutOfTime(Exception):
    """Raised inside an lbfgs step whose deadline passed, to abandon the step."""


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

    @classmethod
    def starting(cls, optimizer: int, x0: torch.Tensor) -> RunGroup:
        count, device = len(x0), x0.device
        nan = torch.full((count,), math.nan, dtype=x0.dtype, device=device)
        return cls(
            optimizer,
            x0.detach().clone(),
            x0.detach().clone(),
            nan,
            nan.clone(),
            torch.zeros(count, dtype=torch.long, device=device),
            torch.full((count,), _MAX_STEPS, dtype=torch.long, device=device),
        )

    @classmethod
    def joined(cls, groups: Sequence[RunGroup]) -> RunGroup:
        """The rows of several groups of the same optimizer, in order (trajectories aligned by step)."""
        if len(groups) == 1:
            return groups[0]
        joined = cls(
            groups[0].optimizer,
            *(torch.cat([getattr(group, name) for group in groups]) for name in _ROW_FIELDS),  # type: ignore[arg-type]
        )
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
        """Row ``row`` as one Run: its recorded points, then its end if that was not recorded."""
        trajectory = Trajectory()
        for record in self.records:
            if bool(record.active[row]):
                trajectory.step.append(record.step)
                trajectory.x.append(record.x[row])
                trajectory.value.append(float(record.value[row]))
        steps = int(self.steps[row])
        if self.records and steps % record_every != 0:
            trajectory.step.append(steps)
            trajectory.x.append(self.x[row])
            trajectory.value.append(float(self.value[row]))
        return Run(
            row,
            self.optimizer,
            self.x0[row],
            self.x[row],
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
    """What to minimise: ``fn`` maps [N, d] to [N] when ``batched``, else [d] to a scalar."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    batched: bool


Progress = Callable[[int, RunGroup], None]


def _look(
    group: RunGroup,
    active: torch.Tensor,
    rows: torch.Tensor,
    values: torch.Tensor,
    norms: torch.Tensor,
    step: int,
    stopping: torch.Tensor,
    diverged: torch.Tensor,
    end: int | None,
    record: bool,
) -> int:
    """Update the active runs' state at ``step``, record their points if ``record``, and stop
    the runs that end here (marking them inactive); returns how many stopped. ``end``: every
    active run ends here, for this reason (the last step, or out of time)."""
    torch.where(active.unsqueeze(-1), rows, group.x, out=group.x)  # elementwise: faster than masking
    torch.where(active, values, group.value, out=group.value)
    torch.where(active, norms, group.grad_norm, out=group.grad_norm)
    group.steps.masked_fill_(active, step)
    ending = active if end is not None else active & stopping
    if record:
        group.records.append(Record(step, rows.clone(), values.clone(), active.clone()))
    count = int(ending.sum())
    if count:
        reason = torch.where(diverged, _DIVERGED, _TOLERANCE)
        code = torch.where(stopping, reason, end if end is not None else _MAX_STEPS)
        torch.where(ending, code, group.stopped, out=group.stopped)
        active &= ~ending
    return count


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


def optimize(
    objective: Objective,
    starts: torch.Tensor,
    optimizers: Sequence[tuple[OptimizerSpec, Mapping[str, Any]]],
    schedule: Schedule,
    compiler: ChunkCompiler | None = None,
) -> Outcome:
    """One run per start (rows of ``starts``) and optimizer; ``compiler`` compiles long Adam
    runs' steps (see ``compiled``)."""
    groups: list[RunGroup] = []
    traced: TracedValueAndGrad | Literal[False] | None = None  # False: tracing failed once
    for index, (spec, settings) in enumerate(optimizers):
        if spec.elementwise and traced is not False:
            traced = traced or _trace(objective, starts)
            if traced:
                stepper = _TracedStepper(traced, starts, spec, settings, compiler, schedule.steps)
                groups.append(_run_group(stepper, starts, index, schedule))
                continue
        if objective.batched and spec.elementwise:
            rows = [starts]
        else:
            rows = [starts[start : start + 1] for start in range(len(starts))]
        parts = [
            _run_group(_AutogradStepper(objective, part, spec, settings, schedule), part, index, schedule, first)
            for first, part in zip(range(0, len(starts), len(rows[0])), rows, strict=True)
        ]
        groups.append(RunGroup.joined(parts))
    if compiler is not None:
        compiler.start_wanted()
    return Outcome(groups, schedule.record_every)


def _trace(objective: Objective, starts: torch.Tensor) -> TracedValueAndGrad | Literal[False]:
    """The objective's traced value and gradient over rows of ``starts``, or False where it
    cannot be traced (plain autograd then evaluates it). Errors in the objective propagate."""
    try:
        return trace_value_and_grad(objective.fn, starts, objective.batched)
    except (InvalidInput, LimitExceeded):
        raise
    except Exception:  # anything tracing cannot follow: autograd still can
        logger.debug("objective not traceable; using autograd", exc_info=True)
        return False


class _Stepper(Protocol):
    """One group of runs' parameters, how to evaluate them and how to step them."""

    rows: torch.Tensor
    """The parameters as [runs, d], updated in place by ``advance``."""
    abandons_steps: bool
    """``advance`` may raise OutOfTime partway, leaving ``rows`` to be restored."""

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Values [runs] and gradients [runs, d] at ``rows``."""

    def advance(self) -> None:
        """One optimizer step from the last evaluation; may raise OutOfTime."""


class _TracedStepper:
    """Every start at once: gradients from the traced graph, and the optimizer's update handed
    them (the fused kernel where there is one)."""

    abandons_steps = False

    def __init__(
        self,
        traced: TracedValueAndGrad,
        starts: torch.Tensor,
        spec: OptimizerSpec,
        settings: Mapping[str, Any],
        compiler: ChunkCompiler | None = None,
        planned_steps: int = 0,
    ) -> None:
        self.traced = traced
        self.rows = starts.detach().clone()
        self.update = spec.update(self.rows, settings)
        self.compiler, self.planned_steps = compiler, planned_steps
        self.chunk: CompiledChunk | None = None
        self.grads = torch.zeros_like(self.rows)
        self.captured: dict[int, _Captured] | None = {}
        """CUDA graphs of ``_steps`` by step count; None once capture has failed."""

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        values, self.grads = self.traced(self.rows.detach())
        return values, self.grads

    def advance(self) -> None:
        self.update(self.grads)

    def skip(self, count: int, active: torch.Tensor, tolerance: float | None) -> bool:
        """Take ``count`` steps without looking at each: True if none of them would have stopped
        an active run; else False, with the parameters and the optimizer state put back."""
        rows, update = self.rows.detach(), self.update
        saved_rows, saved_state = rows.clone(), update.save()
        if bool(active.all()):
            health, near = self._replay(count, tolerance)
        else:
            health, near = self._steps(count, active, tolerance, saved_rows)
        if math.isfinite(float(health)) and not bool(near):
            return True
        rows.copy_(saved_rows)
        update.load(saved_state)
        return False

    def _steps(
        self, count: int, active: torch.Tensor | None, tolerance: float | None, frozen: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` steps of the runs in ``active`` (None: all), the others held at ``frozen``;
        returns the sum of ``finite_probe`` over the steps (NaN once a value or gradient is not
        finite), and whether a gradient norm reached ``tolerance``. No host synchronisation: a
        GPU runs ahead."""
        rows, update, traced = self.rows.detach(), self.update, self.traced
        if active is None and count % CHUNK == 0 and isinstance(update, FusedAdam):
            chunk = self.chunk or self._compiled()
            if chunk is not None:
                return chunk.run(count // CHUNK, rows, update, tolerance)
        watched = None if active is None else torch.nonzero(active).flatten()
        health = torch.zeros((), dtype=rows.dtype, device=rows.device)
        near = torch.zeros((), dtype=torch.bool, device=rows.device)
        for _ in range(count):
            values, grads = traced(rows)
            seen_values, seen_grads = (values, grads) if watched is None else (values[watched], grads[watched])
            health += finite_probe(seen_values, seen_grads)
            if tolerance is not None:
                near |= (torch.linalg.vector_norm(seen_grads, dim=-1) <= tolerance).any()
            update(grads)
            if active is not None and frozen is not None:
                torch.where(active.unsqueeze(-1), rows, frozen, out=rows)
        return health, near

    def _compiled(self) -> CompiledChunk | None:
        if self.compiler is None or not isinstance(self.update, FusedAdam):  # narrows for mypy
            return None
        self.chunk = self.compiler.chunk(self.traced, self.rows.detach(), self.update, self.planned_steps)
        if self.chunk is None and self.compiler.min_steps > self.planned_steps:
            self.compiler = None  # too short a run to compile for: stop asking
        return self.chunk

    def _replay(self, count: int, tolerance: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``_steps`` for every run; on a GPU, from the second time for a given ``count``, as a
        CUDA graph captured the first time: one launch instead of thousands."""
        if not self.rows.is_cuda or not self.update.capturable or self.captured is None:
            return self._steps(count, None, tolerance, None)
        captured = self.captured.get(count)
        if captured is None:
            self.captured[count] = _Captured(lambda: self._steps(count, None, tolerance, None))
            return self._steps(count, None, tolerance, None)  # also warms up what the graph will hold
        if captured.graph is None:
            try:
                captured.capture()
            except RuntimeError:
                logger.warning("CUDA graph capture failed; stepping without it", exc_info=True)
                self.captured = None
                return self._steps(count, None, tolerance, None)
        return captured.replay()


class _Captured:
    """Steps recorded as a CUDA graph: replaying it reruns the same kernels on the same memory."""

    def __init__(self, body: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.body = body
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None

    def capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        # thread_local: other requests' threads may use the GPU meanwhile.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            outputs = self.body()
        self.graph, self.outputs = graph, outputs

    def replay(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.graph is not None and self.outputs is not None
        self.graph.replay()
        return self.outputs


class _AutogradStepper:
    """Plain autograd and a torch.optim optimizer: a batched group for a batched objective,
    else one start; a closure for optimizers that evaluate several times per step (lbfgs)."""

    def __init__(
        self,
        objective: Objective,
        starts: torch.Tensor,
        spec: OptimizerSpec,
        settings: Mapping[str, Any],
        schedule: Schedule,
    ) -> None:
        self.batched = objective.batched and spec.elementwise
        self.x = (starts if self.batched else starts[0]).detach().clone().requires_grad_(True)
        self.rows = self.x if self.batched else self.x.unsqueeze(0)
        self.objective, self.spec, self.schedule = objective, spec, schedule
        self.abandons_steps = not spec.elementwise
        self.optimizer = spec.build(self.x, settings)

    def _values(self) -> torch.Tensor:
        values = self.objective.fn(self.x)
        return values if self.batched else values.reshape(1)

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x
        self.optimizer.zero_grad()
        with torch.enable_grad():
            values = self._values()
            if values.requires_grad:
                values.sum().backward()  # type: ignore[no-untyped-call]
        if x.grad is None:  # the objective does not depend on x: its gradient is zero
            x.grad = torch.zeros_like(x)
        return values.detach(), x.grad if self.batched else x.grad.unsqueeze(0)

    def closure(self) -> torch.Tensor:
        if self.schedule.out_of_time():  # one lbfgs step can run max_iter evaluations: look at each
            raise OutOfTime
        self.optimizer.zero_grad()
        with torch.enable_grad():
            total = self._values().sum()
            total.backward()  # type: ignore[no-untyped-call]
        return total

    def advance(self) -> None:
        if self.spec.elementwise:
            self.optimizer.step()
        else:
            self.optimizer.step(self.closure)  # type: ignore[arg-type]  # LBFGS's closure returns the loss


_SKIP_STEPS = 64
"""Most steps taken between two looks at the clock."""


@torch.no_grad()
def _run_group(
    stepper: _Stepper, starts: torch.Tensor, optimizer_index: int, schedule: Schedule, first_start: int = 0
) -> RunGroup:
    rows = stepper.rows
    group = RunGroup.starting(optimizer_index, starts)
    group.first_start = first_start
    active = torch.ones(len(starts), dtype=torch.bool, device=rows.device)
    steps, record_every, tolerance = schedule.steps, schedule.record_every, schedule.tolerance
    frozen = rows.detach().clone()
    running = len(starts)
    skip = getattr(stepper, "skip", None)
    step = 0
    while True:
        values, grads = stepper.evaluate()
        # One cheap test per step; the exact per-run checks run only when something may stop.
        suspicious = not math.isfinite(float(finite_probe(values, grads)))
        norms = torch.linalg.vector_norm(grads, dim=-1) if tolerance is not None else None
        converged = norms is not None and tolerance is not None and bool((norms[active] <= tolerance).any())
        end = _MAX_STEPS if step == steps else _DEADLINE if schedule.out_of_time() else None
        recorded = step % record_every == 0
        if recorded or end is not None or suspicious or converged:
            norms = torch.linalg.vector_norm(grads, dim=-1) if norms is None else norms
            diverged = ~(torch.isfinite(values) & torch.isfinite(grads).all(dim=-1))
            stopping = diverged | (norms <= tolerance) if tolerance is not None else diverged
            running -= _look(
                group, active, rows, values, norms, step, stopping, diverged, end, recorded and schedule.trajectories
            )
            if schedule.on_progress is not None and recorded:
                schedule.on_progress(step, group)
        if running == 0:
            break
        # A run that stopped keeps its place: its row is put back after each step of the others.
        partial = running < len(starts)
        if partial or stepper.abandons_steps:
            frozen.copy_(rows)
        try:
            stepper.advance()
        except OutOfTime:
            rows.copy_(frozen)  # back to where the abandoned step began
            group.stopped[active] = _DEADLINE
            break
        if partial:
            rows[~active] = frozen[~active]
        step += 1
        # Between the steps that must be looked at, take several at once; if one of them would
        # have stopped a run, they are taken back and taken again one by one.
        quiet = min(steps, -(-step // record_every) * record_every) - step  # to the next recorded step
        while skip is not None and quiet > 1 and not schedule.out_of_time():
            count = min(quiet, _SKIP_STEPS)
            if not skip(count, active, tolerance):
                break
            step += count
            quiet -= count
    return group
