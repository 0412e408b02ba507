"""POST /v1/optimize (streamed on request) and POST /v1/landscape."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request, Response

from service.api.endpoints import ComputeContext, accept, expression_limits, request_deadline, validate_params
from service.api.openapi import compute_post
from service.api.responses import JSONBytesResponse
from service.api.schemas import (
    ExpressionObjective,
    LandscapeRequest,
    LandscapeResponse,
    OptimizeRequest,
    OptimizeResponse,
)
from service.api.streaming import EventStream, wants_events
from service.compute.optimisation import Run, RunGroup, Schedule, tasks
from service.compute.optimisation.objectives import OBJECTIVES, ObjectiveSpec
from service.compute.optimisation.optimizers import OPTIMIZERS, OptimizerSpec
from service.compute.wire import scalar_to_wire
from service.config import Settings

router = APIRouter(tags=["optimisation"])


def _objective(
    field: str | ExpressionObjective, ctx: ComputeContext, settings: Settings, shape: tuple[int, ...], points: int = 1
) -> tasks.Resolved:
    """The request's objective; a formula gets its share of the element budget per point."""
    chosen: str | tasks.Formula
    if isinstance(field, ExpressionObjective):
        chosen = tasks.Formula(field.expression, field.variable, field.inputs, ctx.tensor)
    else:
        chosen = field
    budget = max(1, settings.max_elements // points)
    return tasks.resolve_objective(chosen, shape, ctx.dtype, ctx.device, expression_limits(settings), budget)


def _optimizers(field: Any) -> list[tuple[OptimizerSpec, dict[str, Any]]]:
    choices = field if isinstance(field, list) else [field]
    resolved = []
    for index, choice in enumerate(choices):
        name = choice if isinstance(choice, str) else choice.name
        spec = OPTIMIZERS.get(name)
        given = {} if isinstance(choice, str) else dict(choice.model_extra or {})
        resolved.append((spec, validate_params(spec, given, ("body", "optimizer", index))))
    return resolved


@compute_post(
    router,
    "/v1/optimize",
    OptimizeRequest,
    OptimizeResponse,
    summary="Run optimizers from many starts, with trajectories; streamed as events on request",
    description="With `Accept: text/event-stream` the response is a stream of `progress` events (the step and "
    "each run's current x and value at every `record_every`), then one `result` event holding the usual body "
    "(or one `error` event). A client that disconnects stops the computation.",
)
async def optimize(request: Request) -> Response:
    call = await accept(request, OptimizeRequest, inline=False)
    body, settings = call.body, call.settings
    optimizers = _optimizers(body.optimizer)
    if isinstance(body.objective, str):
        OBJECTIVES.get(body.objective)  # an unknown name is a 404 before any stream starts
    stream = EventStream(request) if wants_events(request) else None

    def compute(ctx: ComputeContext) -> dict[str, Any]:
        starts = tasks.starts_of(body.x0, body.starts, ctx.tensor)
        limits = tasks.RunLimits(settings.max_steps, settings.max_elements, settings.max_trajectory_points)
        trajectories = body.report == "runs"
        tasks.check_runs(starts, optimizers, body.steps, body.record_every if trajectories else None, limits)
        resolved = _objective(body.objective, ctx, settings, tuple(starts.shape[1:]))

        def on_progress(step: int, group: RunGroup) -> None:
            assert stream is not None
            name = optimizers[group.optimizer][0].name
            runs = [
                {
                    "start": start,
                    "optimizer": name,
                    "optimizer_index": group.optimizer,
                    "x": ctx.wire(x),
                    "value": scalar_to_wire(value),
                }
                for start, (x, value) in enumerate(
                    zip(group.points, group.value.tolist(), strict=True), group.first_start
                )
            ]
            stream.progress({"step": step, "runs": runs})

        schedule = Schedule(
            body.steps,
            body.record_every,
            body.tolerance,
            request_deadline(request),
            on_progress if stream else None,
            stream.cancelled if stream else None,
            trajectories=trajectories,
        )
        budget_s = None if stream else settings.request_timeout_s
        compiler, machine = request.app.chunk_compiler, settings.step_machine
        outcome = tasks.run(resolved, starts, optimizers, schedule, compiler, budget_s=budget_s, step_machine=machine)
        if not trajectories:
            summary = tasks.summarize(outcome, optimizers, resolved.entry, body.reach_tolerance)
            return {"summary": _summary(summary, ctx)}
        return {"runs": [_run(run, optimizers, resolved.entry, ctx) for run in outcome.runs()]}

    if stream is None:
        return await call.respond(compute, op="optimize", interruptible=False)
    # The slot is taken before the 200 goes out: a full pool is a 503 (or a 504), not an error event.
    slot = await call.reserve()
    return stream.response(
        lambda: call.respond(compute, op="optimize", enforce_deadline=False, interruptible=False, reserved=slot),
        unused=lambda: call.release(slot),
    )


def _run(run: Run, optimizers: tasks.Optimizers, entry: ObjectiveSpec | None, ctx: ComputeContext) -> Any:
    spec, hyper = optimizers[run.optimizer]
    nearest = tasks.nearest_minimum(entry, run.x)
    return {
        "start": run.start,
        "optimizer": {"name": spec.name, **hyper},
        "x0": ctx.wire(run.x0),
        "x": ctx.wire(run.x),
        "value": scalar_to_wire(run.value),
        "grad_norm": scalar_to_wire(run.grad_norm),
        "steps": run.steps,
        "stopped": run.stopped,
        "trajectory": {
            "step": run.trajectory.step,
            "x": [ctx.wire(x) for x in run.trajectory.x],
            "value": [scalar_to_wire(value) for value in run.trajectory.value],
        },
        "nearest_minimum": nearest
        and {"x": nearest.x, "value": nearest.value, "distance": scalar_to_wire(nearest.distance)},
    }


def _summary(summary: tasks.Summary, ctx: ComputeContext) -> dict[str, Any]:
    return {
        "optimizers": summary.optimizers,
        "x": ctx.wire(summary.x),
        "value": ctx.wire(summary.value),
        "steps": ctx.wire(summary.steps),
        "stopped": summary.stopped,
        "minima": None if summary.minima is None else [asdict(basin) for basin in summary.minima],
    }


@compute_post(
    router,
    "/v1/landscape",
    LandscapeRequest,
    LandscapeResponse,
    summary="Sample a 2-D objective on a grid, with its gradient field on request",
)
async def landscape(request: Request) -> JSONBytesResponse:
    call = await accept(request, LandscapeRequest, inline=False)
    body, settings = call.body, call.settings
    nx, ny = (body.resolution, body.resolution) if isinstance(body.resolution, int) else body.resolution
    grid = tasks.Grid((body.x_range[0], body.x_range[1]), (body.y_range[0], body.y_range[1]), nx, ny)
    grid.check(settings.max_grid_points)

    def compute(ctx: ComputeContext) -> dict[str, Any]:
        # A formula runs once per grid point (vmap), so each point gets its share of the budget.
        resolved = _objective(body.objective, ctx, settings, (2,), points=nx * ny)
        result = tasks.landscape(resolved.objective, grid, body.gradient, ctx.dtype, ctx.device)
        return {
            "x": ctx.wire(result.x),
            "y": ctx.wire(result.y),
            "z": ctx.wire(result.z),
            "grad": ctx.wire(result.grad),
        }

    return await call.respond(compute, op="landscape")
