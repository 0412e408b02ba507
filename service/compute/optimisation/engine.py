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

A variable of any shape ([d], [m, n], ...) is held flattened, one row per start, and handed to
the objective in its own shape (``Objective.over_rows``); the runs report it in that shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from service.compute.optimisation.compiled import ChunkCompiler
from service.compute.optimisation.optimizers import OptimizerSpec
from service.compute.optimisation.runs import (
    STOP_DEADLINE,
    STOP_DIVERGED,
    STOP_MAX_STEPS,
    STOP_TOLERANCE,
    Objective,
    Outcome,
    Record,
    RunGroup,
    Schedule,
)
from service.compute.optimisation.steppers import (
    AutogradStepper,
    MachineStepper,
    OutOfTime,
    Stepper,
    TracedStepper,
    trace_objective,
)
from service.compute.optimisation.traced import TracedValueAndGrad, finite_probe


def optimize(
    objective: Objective,
    starts: torch.Tensor,
    optimizers: Sequence[tuple[OptimizerSpec, Mapping[str, Any]]],
    schedule: Schedule,
    compiler: ChunkCompiler | None = None,
    step_machine: bool = True,
) -> Outcome:
    """One run per start and optimizer; ``starts`` is [N, *shape], one start per row, each of
    the variable's shape. ``step_machine``: small groups of runs are evaluated by the step
    machine where it can (see ``machine``); ``compiler`` compiles the other long Adam runs'
    steps (see ``compiled``)."""
    shape = tuple(starts.shape[1:])
    # The runs hold their points flattened, [N, D]: the objective gets them back in their shape.
    # Every optimizer here updates a tensor as it would its flattened view (elementwise ones
    # element by element; lbfgs flattens its parameters itself), so each run is still its loop's.
    objective, starts = objective.over_rows(shape), starts.reshape(len(starts), -1)
    groups: list[RunGroup] = []
    traced: TracedValueAndGrad | Literal[False] | None = None  # False: tracing failed once
    for index, (spec, hyper) in enumerate(optimizers):
        if spec.elementwise and traced is not False:
            traced = traced or trace_objective(objective, starts)
            if traced:
                on_machine = MachineStepper.of(traced, starts, spec, hyper) if step_machine else None
                stepper = on_machine or TracedStepper(traced, starts, spec, hyper, compiler, schedule.steps)
                groups.append(_run_group(stepper, starts, shape, index, schedule))
                continue
        if objective.batched and spec.elementwise:
            rows = [starts]
        else:
            rows = [starts[start : start + 1] for start in range(len(starts))]
        parts = [
            _run_group(AutogradStepper(objective, part, spec, hyper, schedule), part, shape, index, schedule, first)
            for first, part in zip(range(0, len(starts), len(rows[0])), rows, strict=True)
        ]
        groups.append(RunGroup.joined(parts))
    if compiler is not None:
        compiler.start_wanted()
    return Outcome(groups, schedule.record_every)


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
        reason = torch.where(diverged, STOP_DIVERGED, STOP_TOLERANCE)
        code = torch.where(stopping, reason, end if end is not None else STOP_MAX_STEPS)
        torch.where(ending, code, group.stopped, out=group.stopped)
        active &= ~ending
    return count


_SKIP_STEPS = 64
"""Most steps taken between two looks at the clock."""


@torch.no_grad()
def _run_group(
    stepper: Stepper,
    starts: torch.Tensor,
    shape: tuple[int, ...],
    optimizer_index: int,
    schedule: Schedule,
    first_start: int = 0,
) -> RunGroup:
    rows = stepper.rows
    group = RunGroup.starting(optimizer_index, starts, shape)
    group.first_start = first_start
    active = torch.ones(len(starts), dtype=torch.bool, device=rows.device)
    steps, record_every, tolerance = schedule.steps, schedule.record_every, schedule.tolerance
    frozen = rows.detach().clone()
    running = len(starts)
    step = 0
    while True:
        values, grads = stepper.evaluate()
        # One cheap test per step; the exact per-run checks run only when something may stop.
        suspicious = not math.isfinite(float(finite_probe(values, grads)))
        norms = torch.linalg.vector_norm(grads, dim=-1) if tolerance is not None else None
        converged = norms is not None and tolerance is not None and bool((norms[active] <= tolerance).any())
        end = STOP_MAX_STEPS if step == steps else STOP_DEADLINE if schedule.out_of_time() else None
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
            group.stopped[active] = STOP_DEADLINE
            break
        if partial:
            rows[~active] = frozen[~active]
        step += 1
        # Between the steps that must be looked at, take several at once; if one of them would
        # have stopped a run, they are taken back and taken again one by one.
        quiet = min(steps, -(-step // record_every) * record_every) - step  # to the next recorded step
        while quiet > 1 and not schedule.out_of_time():
            count = min(quiet, _SKIP_STEPS)
            if not stepper.skip(count, active, tolerance):
                break
            step += count
            quiet -= count
    return group
