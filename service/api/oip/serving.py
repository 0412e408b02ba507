"""Serving the protocol's requests. An inference is admitted and read like every compute
request (with compute workers, the whole request goes to one; only an activation's or a loss's
small request computes inline), then its model is found (a saved formula is read from the
database in the compute thread, never on the event loop), its tensors decoded, its outputs
computed under the request's time budget and answered as JSON or binary data."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import anyio.to_thread
import torch
from fastapi import Request, Response

from service import lifecycle
from service.api.asgi import raw_header
from service.api.endpoints import admit, read_body, request_deadline, run_compute, settings_of
from service.api.oip.models import Model, Setup, find_model, is_builtin
from service.api.oip.schemas import ModelMetadata
from service.api.oip.wire import HEADER_LENGTH, binary_outputs, decode_inputs, inflate, parse_body, write_response
from service.compute.budgets import Deadline
from service.compute.runtime import out_of_memory, resolve_device
from service.compute.wire import ElementBudget
from service.errors import DeadlineExceeded

HEADER_LENGTH_NAME = "Inference-Header-Content-Length"


def server_ready(request: Request) -> bool:
    """Ready as /readyz says it: started, and not draining."""
    return lifecycle.readiness(request.app) == "ready"


async def model(request: Request, name: str, version: str | None) -> Model:
    """The model, read from the database in a thread if it is a saved formula."""
    formulas = request.app.formulas
    if is_builtin(name):
        return find_model(name, version, formulas)
    return await anyio.to_thread.run_sync(find_model, name, version, formulas)


async def metadata(request: Request, name: str, version: str | None) -> ModelMetadata:
    found = await model(request, name, version)
    settings = settings_of(request)
    if is_builtin(name):
        return found.described(settings)
    return await anyio.to_thread.run_sync(found.described, settings)


async def infer(request: Request, name: str, version: str | None) -> Response:
    """POST /v2/models/{name}[/versions/{version}]/infer."""
    settings = settings_of(request)
    app, scope = request.app, request.scope
    inline = admit(request, inline=is_builtin(name))
    raw = await read_body(request)
    device = resolve_device("auto", settings.device)
    if inline and device.type == "cuda" and app.compute_pool.remote:  # GPUs belong to the workers
        inline = admit(request, inline=False, body=raw)
    inflated = inflate(raw, raw_header(scope, b"content-encoding"), settings.max_body_bytes)
    if inline and len(inflated) > settings.inline_compute_bytes:  # small only while compressed
        inline = admit(request, inline=False, body=raw)
    body = parse_body(inflated, raw_header(scope, HEADER_LENGTH))
    deadline = request_deadline(request)
    op = f"oip/{name}" if is_builtin(name) else "oip/formula"

    def job() -> tuple[bytes, int | None]:
        started = time.perf_counter()
        watch = Deadline(deadline, settings.request_timeout_s) if not inline else nullcontext()
        try:
            with watch:
                found = find_model(name, version, app.formulas)
                wanted = None if body.request.outputs is None else [output.name for output in body.request.outputs]
                found.check({item.name: item.datatype for item in body.request.inputs}, wanted)
                binary_outputs(body.request, wanted or [])  # its flags checked before computing
                tensors = decode_inputs(body, ElementBudget(settings.max_elements))
                outputs = found.infer(tensors, body.request.parameters, wanted, Setup(settings, device))
                header: dict[str, Any] = {"model_name": found.name, "model_version": found.version}
                if body.request.id is not None:
                    header["id"] = body.request.id
                return write_response(header, outputs, binary_outputs(body.request, list(outputs)))
        except torch.OutOfMemoryError as exc:
            raise out_of_memory("this request") from exc
        finally:
            app.metrics.observe_compute(op, time.perf_counter() - started)

    payload, header_length = await run_compute(request, job, inline, deadline)
    if time.monotonic() > deadline:
        raise DeadlineExceeded(
            f"The request's time budget of {settings.request_timeout_s:g} s ran out; send less, or ask for less."
        )
    if header_length is None:
        return Response(payload, media_type="application/json")
    return Response(payload, media_type="application/octet-stream", headers={HEADER_LENGTH_NAME: str(header_length)})
