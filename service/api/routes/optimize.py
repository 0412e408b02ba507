"""GET /v1/objectives, GET /v1/optimizers, POST /v1/optimize and POST /v1/landscape."""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.from_thread
import torch
from anyio.streams.memory import MemoryObjectSendStream
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.sse import format_sse_event
from pydantic import ValidationError

from service.api.context import ComputeContext, expression_limits
from service.api.deps import settings_of
from service.api.dispatch import admit, compute_response, request_deadline
from service.api.errors import internal_error
from service.api.jsonbody import read_json_body
from service.api.responses import JSONBytesResponse, dump_json
from service.api.routes.common import AUTH_RESPONSES, compute_post
from service.api.schemas import (
    ExpressionObjective,
    LandscapeRequest,
    OptimizeRequest,
    params_model,
    params_schema,
)
from service.compute import optimize as engine
from service.compute.expressions import compile_program
from service.compute.objectives import OBJECTIVES
from service.compute.optimizers import OPTIMIZERS, OptimizerSpec
from service.compute.runtime import torch_errors
from service.compute.tensors import scalar_to_wire
from service.config import Settings
from service.errors import DeadlineExceeded, InvalidInput, LimitExceeded, ServiceError

router = APIRouter(tags=["optimisation"])
PROGRESS_BUFFER = 64
"""Progress events waiting for a slow reader; past it, new ones are dropped (the result never is)."""


@router.get(
    "/v1/objectives", summary="Test functions: formulas, dimensions, domains and known minima", responses=AUTH_RESPONSES
)
def list_objectives() -> dict[str, Any]:
    return {
        "objectives": [
            {
                "name": objective.name,
                "formula": objective.formula,
                "dimension": objective.dimension,
                "domain": [list(box) for box in objective.box(objective.dimension or 2)],
                "minima": [{"x": x, "value": value} for x, value in objective.minima(objective.dimension or 2)],
            }
            for objective in OBJECTIVES
        ]
    }


@router.get(
    "/v1/optimizers",
    summary="torch.optim optimizers and the JSON schema of their hyper-parameters",
    responses=AUTH_RESPONSES,
)
def list_optimizers() -> dict[str, Any]:
    return {"optimizers": [{"name": spec.name, "doc": spec.doc, "params": params_schema(spec)} for spec in OPTIMIZERS]}


def _objective(
    field: str | ExpressionObjective, ctx: ComputeContext, settings: Settings, dimension: int | None, points: int = 1
) -> tuple[engine.Objective, Any]:
    """The engine's objective, and the catalog entry (None for expressions)."""
    if isinstance(field, str):
        entry = OBJECTIVES.get(field)
        if entry.dimension is not None and dimension is not None and dimension != entry.dimension:
            raise InvalidInput(
                f"{entry.name} is {entry.dimension}-dimensional, but the starts are {dimension}-dimensional.",
                error_type="shape_mismatch",
            )
        return engine.Objective(entry.fn, batched=True), entry
    limits = expression_limits(settings)
    if field.variable in field.inputs:
        raise InvalidInput(
            f"'{field.variable}' is the variable; it cannot also be an input.", error_type="invalid_input"
        )
    names = frozenset({*field.inputs, field.variable})
    budget = max(1, settings.max_elements // points)
    program = compile_program(field.expression, names, ctx.dtype, ctx.device, limits, budget)
    constants = {name: ctx.tensor(value, f"objective.inputs.{name}") for name, value in field.inputs.items()}

    def fn(x: torch.Tensor) -> torch.Tensor:
        value = program({**constants, field.variable: x})
        if value.numel() != 1:
            raise InvalidInput(
                f"The objective must be a scalar, but has shape {list(value.shape)}.", error_type="not_scalar"
            )
        return value.reshape(())

    return engine.Objective(fn, batched=False), None


def _optimizers(field: Any) -> list[tuple[OptimizerSpec, dict[str, Any]]]:
    choices = field if isinstance(field, list) else [field]
    resolved = []
    for index, choice in enumerate(choices):
        name = choice if isinstance(choice, str) else choice.name
        spec = OPTIMIZERS.get(name)
        given = {} if isinstance(choice, str) else dict(choice.model_extra or {})
        try:
            validated = params_model(spec).model_validate(given)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**error, "loc": ("body", "optimizer", index, *error["loc"])} for error in exc.errors()]
            ) from exc
        resolved.append((spec, {key: getattr(validated, key) for key in type(validated).model_fields}))
    return resolved


def _starts(body: OptimizeRequest, ctx: ComputeContext) -> torch.Tensor:
    if (body.x0 is None) == (body.starts is None):
        raise InvalidInput("Give exactly one of x0 (one start) and starts (several).", error_type="invalid_input")
    if body.x0 is not None:
        x0 = ctx.tensor(body.x0, "x0")
        if x0.dim() != 1 or not x0.numel():
            raise InvalidInput(f"x0 must be a point of shape [d], not {list(x0.shape)}.", error_type="shape_mismatch")
        return x0.unsqueeze(0)
    starts = ctx.tensor(body.starts, "starts")
    if starts.dim() != 2 or not starts.numel():
        raise InvalidInput(f"starts must have shape [N, d], not {list(starts.shape)}.", error_type="shape_mismatch")
    return starts


@compute_post(
    router,
    "/v1/optimize",
    OptimizeRequest,
    summary="Run optimizers from many starts, with trajectories; streamed as events on request",
    description="With `Accept: text/event-stream` the response is a stream of `progress` events (the step and "
    "each run's current x and value at every `record_every`), then one `result` event holding the usual body "
    "(or one `error` event). A client that disconnects stops the computation.",
)
async def optimize(request: Request) -> Response:
    settings = settings_of(request)
    admit(request, inline=False)
    body = await read_json_body(request, OptimizeRequest)
    optimizers = _optimizers(body.optimizer)
    if isinstance(body.objective, str):
        OBJECTIVES.get(body.objective)  # an unknown name is a 404 before any stream starts
    streamed = "text/event-stream" in request.headers.get("accept", "")
    events: MemoryObjectSendStream[bytes] | None = None
    cancelled = threading.Event()

    def compute(ctx: ComputeContext) -> dict[str, Any]:
        starts = _starts(body, ctx)
        count, dimension = len(starts), starts.shape[1]
        # An lbfgs step evaluates the objective up to max_iter times, and keeps 2 x history_size vectors.
        work = sum(body.steps * count * options.get("max_iter", 1) for _, options in optimizers)
        _limit("steps x runs", work, settings.max_steps, "too_many_steps")
        history = max((options.get("history_size", 0) * 2 for _, options in optimizers), default=0)
        _limit("elements of optimizer state", history * count * dimension, settings.max_elements, "state_too_large")
        if body.report == "runs":
            points = count * len(optimizers) * (body.steps // body.record_every + 2)
            _limit("trajectory points", points, settings.max_trajectory_points, "trajectory_too_long")
            _limit("trajectory elements", points * dimension, settings.max_elements, "trajectory_too_long")
        objective, entry = _objective(body.objective, ctx, settings, dimension)

        def on_progress(step: int, group: engine.RunGroup) -> None:
            assert events is not None
            name = optimizers[group.optimizer][0].name
            state = [
                {
                    "start": start,
                    "optimizer": name,
                    "optimizer_index": group.optimizer,
                    "x": ctx.wire(x),
                    "value": scalar_to_wire(value),
                }
                for start, (x, value) in enumerate(zip(group.x, group.value.tolist(), strict=True), group.first_start)
            ]
            try:  # a full buffer means a slow reader: drop this event rather than pile them up
                anyio.from_thread.run_sync(events.send_nowait, _event("progress", {"step": step, "runs": state}))
            except anyio.WouldBlock:
                pass
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                cancelled.set()  # nobody is listening any more

        schedule = engine.Schedule(
            body.steps,
            body.record_every,
            body.tolerance,
            request_deadline(request),
            on_progress if streamed else None,
            cancelled.is_set,
            trajectories=body.report == "runs",
        )
        with torch_errors("the optimisation"):
            compiler = getattr(request.app.state, "chunk_compiler", None)  # set by the lifespan
            outcome = engine.optimize(objective, starts, optimizers, schedule, compiler)
        if not streamed and any("deadline" in group.reasons() for group in outcome.groups):
            done = sum(int(group.steps.sum()) for group in outcome.groups)
            raise DeadlineExceeded(
                f"The request's time budget of {settings.request_timeout_s:g} s ran out after {done} steps in all; "
                "ask for fewer steps, or stream the run (Accept: text/event-stream) to keep what it reached."
            )
        if body.report == "summary":
            return {"summary": _summary(outcome, optimizers, entry, body.reach_tolerance, ctx)}
        return {"runs": [_run(run, optimizers, entry, ctx) for run in outcome.runs()]}

    if not streamed:
        return await compute_response(request, body, compute, op="optimize", inline=False)
    events, received = anyio.create_memory_object_stream[bytes](max_buffer_size=PROGRESS_BUFFER)

    async def produce() -> None:
        assert events is not None
        async with events:
            try:
                response = await compute_response(
                    request, body, compute, op="optimize", inline=False, enforce_deadline=False
                )
                await events.send(_event("result", raw=bytes(response.body)))
            except ServiceError as error:
                await events.send(_event("error", error.body()))
            except Exception:
                await events.send(_event("error", internal_error(request.scope, "in a streamed optimisation")))

    async def stream() -> AsyncIterator[bytes]:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(produce)
            try:
                async with received:
                    async for event in received:
                        yield event
            finally:
                cancelled.set()  # the client went away (or the stream ended): stop computing

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _event(kind: str, data: Any = None, raw: bytes | None = None) -> bytes:
    text = (raw if raw is not None else dump_json(data)).decode()
    return format_sse_event(data_str=text, event=kind)


def _run(
    run: engine.Run, optimizers: list[tuple[OptimizerSpec, dict[str, Any]]], entry: Any, ctx: ComputeContext
) -> Any:
    spec, settings = optimizers[run.optimizer]
    nearest = None
    if entry is not None:
        distances = [(math.dist(run.x.tolist(), x), x, value) for x, value in entry.minima(run.x.numel())]
        distance, x, value = min(distances)
        nearest = {"x": x, "value": value, "distance": scalar_to_wire(distance)}
    return {
        "start": run.start,
        "optimizer": {"name": spec.name, **settings},
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
        "nearest_minimum": nearest,
    }


def _summary(
    outcome: engine.Outcome,
    optimizers: list[tuple[OptimizerSpec, dict[str, Any]]],
    entry: Any,
    reach: float,
    ctx: ComputeContext,
) -> dict[str, Any]:
    """Final points, values and step counts as tensors, and basin counts. Row ``i`` is the run
    of start ``i // k`` with optimizer ``i % k`` of the ``k`` listed."""
    groups = outcome.groups
    dimension = groups[0].x.shape[1]
    points = torch.stack([group.x for group in groups], dim=1).reshape(-1, dimension)
    values = torch.stack([group.value for group in groups], dim=1).reshape(-1)
    codes = torch.stack([group.stopped for group in groups], dim=1).reshape(-1)
    tally = torch.bincount(codes, minlength=len(engine.STOP_REASONS)).tolist()
    stopped = {reason: amount for reason, amount in zip(engine.STOP_REASONS, tally, strict=True) if amount}
    minima = None
    if entry is not None:
        known = entry.minima(dimension)
        targets = torch.tensor([x for x, _ in known], dtype=points.dtype, device=points.device)
        distances = torch.cdist(points, targets)
        closest = distances.argmin(dim=1)
        reached = distances.min(dim=1).values <= reach
        minima = [
            {"x": x, "value": value, "count": int(((closest == index) & reached).sum())}
            for index, (x, value) in enumerate(known)
        ]
    return {
        "optimizers": [optimizers[group.optimizer][0].name for group in groups],
        "x": ctx.wire(points),
        "value": ctx.wire(values),
        "steps": ctx.wire(torch.stack([group.steps for group in groups], dim=1).reshape(-1)),
        "stopped": stopped,
        "minima": minima,
    }


def _limit(what: str, amount: int, limit: int, error_type: str) -> None:
    if amount > limit:
        raise LimitExceeded(
            f"This request needs {amount} {what}, over the limit of {limit}.", error_type=error_type, limit=limit
        )


@compute_post(
    router,
    "/v1/landscape",
    LandscapeRequest,
    summary="Sample a 2-D objective on a grid, with its gradient field on request",
)
async def landscape(request: Request) -> JSONBytesResponse:
    settings = settings_of(request)
    admit(request, inline=False)
    body = await read_json_body(request, LandscapeRequest)
    nx, ny = (body.resolution, body.resolution) if isinstance(body.resolution, int) else body.resolution
    if nx < 2 or ny < 2:
        raise InvalidInput("resolution must be at least 2 points per axis.", error_type="invalid_input")
    for name, (lo, hi) in (("x_range", body.x_range), ("y_range", body.y_range)):
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise InvalidInput(f"{name} must be [lo, hi] with finite lo < hi.", error_type="invalid_input")
    _limit("grid points", nx * ny, settings.max_grid_points, "grid_too_large")

    def compute(ctx: ComputeContext) -> dict[str, Any]:
        # An expression runs once per grid point (vmap), so each point gets its share of the budget.
        objective, _ = _objective(body.objective, ctx, settings, 2, points=nx * ny)
        (x_lo, x_hi), (y_lo, y_hi) = body.x_range, body.y_range
        xs = torch.linspace(x_lo, x_hi, nx, dtype=ctx.dtype, device=ctx.device)
        ys = torch.linspace(y_lo, y_hi, ny, dtype=ctx.dtype, device=ctx.device)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).requires_grad_(body.gradient)
        with torch_errors("the landscape"), torch.set_grad_enabled(body.gradient):
            if objective.batched:
                z = objective.fn(grid)
            else:  # one vmap over the flattened grid (nested vmaps trip over some losses)
                z = torch.func.vmap(objective.fn)(grid.reshape(-1, 2)).reshape(ny, nx)
            grad = None
            if body.gradient:
                (grad,) = torch.autograd.grad(z.sum(), grid, allow_unused=True, materialize_grads=True)
        return {"x": ctx.wire(xs), "y": ctx.wire(ys), "z": ctx.wire(z), "grad": ctx.wire(grad)}

    return await compute_response(request, body, compute, op="landscape", inline=False)
