"""Saved formulas as Tesseracts, under /tesseract/{name}/: POST apply, jacobian,
jacobian_vector_product, vector_jacobian_product and abstract_eval; GET health and openapi.json
(the formula's own OpenAPI document, which Tesseract's clients read). Served like every compute
route: in a compute worker, admitted (503) and under the time budget (504). Errors have
Tesseract's shapes (``service.api.tesseract``), wherever they arise."""

from __future__ import annotations

import time
from typing import Any

import torch
from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from service.api.asgi import raw_header
from service.api.asgi._lane import StartTrackingSend
from service.api.endpoints import (
    RequestRoute,
    admit,
    expression_limits,
    read_body,
    request_deadline,
    require_json,
    run_compute,
    settings_of,
)
from service.api.responses import JSONBytesResponse, dump_json
from service.api.tesseract import (
    ARRAY_ENDPOINTS,
    ENDPOINTS,
    Described,
    ProtocolError,
    Reader,
    document,
    negotiate,
    protocol_response,
    run,
)
from service.compute.budgets import Deadline
from service.compute.expressions.component import Component, output_type
from service.compute.expressions.saved import compute_dtype, saved_program, torch_dtype
from service.compute.runtime import out_of_memory, resolve_device
from service.compute.wire import DTYPE_NAMES, ElementBudget, parse_json
from service.config import Settings
from service.errors import DeadlineExceeded, ServiceError
from service.store import SavedFormula, formula_not_found

router = APIRouter(tags=["tesseract"])
GETS = ("health", "openapi.json")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]


class TesseractRoute(RequestRoute):
    """A compute route whose every error (the worker pool's too: 503, 504, a crashed worker) is
    answered in Tesseract's shape."""

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracking_send = StartTrackingSend(send)
        try:
            await super().serve(scope, receive, tracking_send)
        except ClientDisconnect:
            raise
        except Exception as exc:
            if tracking_send.started:
                raise
            await protocol_response(exc, scope)(scope, receive, send)


def _component(formula: SavedFormula, settings: Settings, device: torch.device) -> Component:
    limits = expression_limits(settings)
    dtype = compute_dtype(formula.inputs)
    return Component(
        formula.expression,
        saved_program(formula, dtype, device, limits, settings.max_elements),
        dtype,
        limits,
        settings.max_elements,
        settings.max_jacobian_elements,
        settings.max_flops,
    )


def _described(formula: SavedFormula, settings: Settings) -> Described:
    """What the formula's OpenAPI document says; the output's shape is None if the formula fails
    at its declared shapes (its requests then say why)."""
    dtype = compute_dtype(formula.inputs)
    types = {name: (spec.shape, torch_dtype(spec)) for name, spec in formula.inputs.items()}
    output: tuple[tuple[int, ...] | None, str]
    try:
        shape, out_dtype = output_type(
            formula.expression, dtype, types, expression_limits(settings), settings.max_elements
        )
        output = (shape, DTYPE_NAMES[out_dtype])
    except ServiceError:
        output = (None, DTYPE_NAMES[dtype])
    return Described(
        name=formula.name,
        version=formula.version,
        description=formula.description or f"The saved formula {formula.expression}",
        inputs=tuple((name, spec.shape, spec.dtype) for name, spec in formula.inputs.items()),
        output=output,
    )


async def _serve(request: Request, name: str, endpoint: str) -> Response:
    """One endpoint of the formula ``name``: everything after the admission (and, with compute
    workers, all of it) runs in a compute worker, the formula read from the database there."""
    admit(request, inline=False)  # Forward with compute workers; 503 when the pool is full
    accept = raw_header(request.scope, b"accept")
    output_format = (
        negotiate(None if accept is None else accept.decode("latin-1")) if endpoint in ARRAY_ENDPOINTS else None
    )
    computes = endpoint in ENDPOINTS
    if computes:
        require_json(request)
    raw = await read_body(request) if computes else b""
    settings, app = settings_of(request), request.app
    deadline = request_deadline(request)

    def job() -> bytes:
        started = time.perf_counter()
        formula = app.formulas.get(name)
        if formula is None:
            raise formula_not_found(name)
        if endpoint == "health":
            return dump_json({"status": "ok"})
        if endpoint == "openapi.json":
            return dump_json(document(_described(formula, settings)))
        device = resolve_device("auto", settings.device)
        try:
            with Deadline(deadline, settings.request_timeout_s):
                reader = Reader(
                    formula, _component(formula, settings, device), device, ElementBudget(settings.max_elements)
                )
                return dump_json(run(endpoint, parse_json(raw), reader, output_format or "json+base64"))
        except torch.OutOfMemoryError as exc:
            raise out_of_memory("this request") from exc
        finally:
            app.metrics.observe_compute(f"tesseract_{endpoint}", time.perf_counter() - started)

    payload = await run_compute(request, job, False, deadline)
    if time.monotonic() > deadline:
        raise DeadlineExceeded(
            f"The request's time budget of {settings.request_timeout_s:g} s ran out; send less, or ask for less."
        )
    return Response(payload, media_type=f"application/{output_format or 'json'}")


def _endpoint(endpoint: str) -> Any:
    async def serve(request: Request, name: str) -> Response:
        return await _serve(request, name, endpoint)

    serve.__name__ = f"tesseract_{endpoint.replace('.', '_')}"
    return serve


for _name in (*ENDPOINTS, *GETS):
    router.add_api_route(
        f"/tesseract/{{name}}/{_name}",
        _endpoint(_name),
        methods=["GET" if _name in GETS else "POST"],
        route_class_override=TesseractRoute,
        include_in_schema=False,  # each formula's Tesseract documents itself at its openapi.json
    )


@router.api_route("/tesseract/{name}/{rest:path}", methods=METHODS, include_in_schema=False)
async def elsewhere(request: Request, name: str, rest: str) -> JSONBytesResponse:
    """Any other path or method under a formula's Tesseract: 404 or 405, as Tesseract's runtime says."""
    if rest in ENDPOINTS or rest in GETS:
        allow = "GET" if rest in GETS else "POST"
        response = protocol_response(ProtocolError(405, "Method Not Allowed"), request.scope)
        response.headers["Allow"] = allow
        return response
    return protocol_response(ProtocolError(404, "Not Found"), request.scope)
