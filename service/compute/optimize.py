"""Optimisation runs: many starts and several optimizers, each run equal to an independent
torch.optim loop (zero_grad, backward, step; a closure for lbfgs) from its start.

Starts share one batched parameter per optimizer when the optimizer updates each element from
its own gradient and state alone and the objective is batched over leading dimensions: the sum
of the per-start values has exactly the per-start gradients, so every row gets exactly the
update its own loop would. A run that stops early is frozen: its row is restored after each
step, so the other runs go on unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from service.compute.optimizers import OptimizerSpec

StopReason = Literal["max_steps", "tolerance", "diverged", "deadline"]


class OutOfTime(Exception):
    """Raised inside an lbfgs step whose deadline passed, to abandon the step."""


@dataclass
class Trajectory:
    step: list[int] = field(default_factory=list)
    x: list[torch.Tensor] = field(default_factory=list)
    value: list[float] = field(default_factory=list)


@dataclass
class Run:
    start: int
    optimizer: int
    x0: torch.Tensor
    x: torch.Tensor
    value: float = math.nan
    grad_norm: float = math.nan
    steps: int = 0
    stopped: StopReason = "max_steps"
    trajectory: Trajectory = field(default_factory=Trajectory)


@dataclass(frozen=True)
class Objective:
    """What to minimise: ``fn`` maps [N, d] to [N] when ``batched``, else [d] to a scalar."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    batched: bool


Progress = Callable[[int, list[Run]], None]


def _record(
    runs: list[Run],
    active: torch.Tensor,
    rows: torch.Tensor,
    values: torch.Tensor,
    norms: torch.Tensor,
    step: int,
    stopping: torch.Tensor,
    diverged: torch.Tensor,
    steps: int,
    out_of_time: bool,
    record_every: int,
    trajectories: bool = True,
) -> int:
    """Update the active runs' state at ``step``, record trajectory points, and stop the runs
    that end here (marking them inactive); returns how many stopped."""
    stopped = 0
    for i in torch.nonzero(active).flatten().tolist():
        run = runs[i]
        run.value, run.grad_norm, run.steps = float(values[i]), float(norms[i]), step
        run.x = rows[i].detach().clone()
        reason: StopReason | None = None
        if bool(stopping[i]):
            reason = "diverged" if bool(diverged[i]) else "tolerance"
        elif step == steps:
            reason = "max_steps"
        elif out_of_time:
            reason = "deadline"
        if trajectories and (step % record_every == 0 or reason is not None):
            run.trajectory.step.append(step)
            run.trajectory.x.append(rows[i].detach().clone())
            run.trajectory.value.append(run.value)
        if reason is not None:
            run.stopped = reason
            active[i] = False
            stopped += 1
    return stopped


@dataclass(frozen=True)
class Schedule:
    """How long runs go and what they report: ``deadline`` is a ``time.monotonic()`` instant;
    ``on_progress(step, runs)`` is called at every recorded step of each group of runs."""

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


def optimize(
    objective: Objective,
    starts: torch.Tensor,
    optimizers: Sequence[tuple[OptimizerSpec, Mapping[str, Any]]],
    schedule: Schedule,
) -> list[Run]:
    """One run per start (rows of ``starts``) and optimizer, ordered by start then optimizer."""
    runs: list[Run] = []
    for index, (spec, settings) in enumerate(optimizers):
        if objective.batched and spec.elementwise:
            groups = [list(range(len(starts)))]
        else:
            groups = [[start] for start in range(len(starts))]
        for group in groups:
            runs += _run_group(objective, starts, group, index, spec, settings, schedule)
    return sorted(runs, key=lambda run: (run.start, run.optimizer))


def _run_group(
    objective: Objective,
    starts: torch.Tensor,
    group: list[int],
    optimizer_index: int,
    spec: OptimizerSpec,
    settings: Mapping[str, Any],
    schedule: Schedule,
) -> list[Run]:
    batched = objective.batched and spec.elementwise
    x = (starts[group] if batched else starts[group[0]]).detach().clone().requires_grad_(True)
    rows = x if batched else x.unsqueeze(0)
    runs = [
        Run(start, optimizer_index, starts[start].detach().clone(), rows[i].detach()) for i, start in enumerate(group)
    ]
    optimizer = spec.build(x, settings)
    active = torch.ones(len(group), dtype=torch.bool, device=x.device)

    def evaluate() -> torch.Tensor:
        values = objective.fn(x)
        return values if batched else values.reshape(1)

    def closure() -> torch.Tensor:
        if schedule.out_of_time():  # one lbfgs step can run max_iter evaluations: look at each
            raise OutOfTime
        optimizer.zero_grad()
        total = evaluate().sum()
        total.backward()  # type: ignore[no-untyped-call]
        return total

    steps, record_every, tolerance = schedule.steps, schedule.record_every, schedule.tolerance
    frozen = x.detach().clone()
    running = len(group)
    for step in range(steps + 1):
        optimizer.zero_grad()
        values = evaluate()
        if values.requires_grad:
            values.sum().backward()  # type: ignore[no-untyped-call]
        if x.grad is None:  # the objective does not depend on x: its gradient is zero
            x.grad = torch.zeros_like(x)
        with torch.no_grad():
            grads = x.grad if batched else x.grad.unsqueeze(0)
            # One cheap test per step; the exact per-run checks run only when something may stop.
            suspicious = not math.isfinite(float(values.sum() + grads.sum()))
            norms = torch.linalg.vector_norm(grads, dim=-1) if tolerance is not None else None
            converged = norms is not None and tolerance is not None and bool((norms[active] <= tolerance).any())
            out_of_time = schedule.out_of_time()
            if step % record_every == 0 or step == steps or out_of_time or suspicious or converged:
                norms = torch.linalg.vector_norm(grads, dim=-1) if norms is None else norms
                diverged = ~(torch.isfinite(values) & torch.isfinite(grads).all(dim=-1))
                stopping = diverged | (norms <= tolerance) if tolerance is not None else diverged
                stopping &= active
                running -= _record(
                    runs, active, rows, values, norms, step, stopping, diverged, steps, out_of_time, record_every
                )
                if schedule.on_progress is not None and step % record_every == 0:
                    schedule.on_progress(step, runs)
        if running == 0:
            break
        partial = batched and running < len(group)
        if partial or not spec.elementwise:
            with torch.no_grad():
                frozen.copy_(x)
        if spec.elementwise:
            optimizer.step()
        else:
            try:
                optimizer.step(closure)  # type: ignore[arg-type]  # LBFGS's closure returns the loss tensor
            except OutOfTime:
                with torch.no_grad():
                    x.copy_(frozen)  # back to where the abandoned step began
                for i in torch.nonzero(active).flatten().tolist():
                    runs[i].stopped = "deadline"
                break
        if partial:
            with torch.no_grad():
                x[~active] = frozen[~active]
    for i, run in enumerate(runs):
        run.x = rows[i].detach().clone()
    return runs
