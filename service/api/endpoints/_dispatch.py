"""Where a computation runs (small ones on the event loop, the rest in the bounded compute pool),
and the one way every compute route turns its result into a response."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from fastapi import Request

from service.api.asgi import STARTED_KEY, raw_header
from service.api.endpoints._body import parse_json_body, read_body, require_json
from service.api.endpoints._context import ComputeContext
from service.api.endpoints._settings import settings_of
from service.api.responses import JSONBytesResponse, dump_json
from service.api.schemas import ComputeRequest
from service.compute.budgets import Deadline
from service.compute.runtime import out_of_memory, resolve_device
from service.config import Settings
from service.errors import DeadlineExceeded

T = TypeVar("T")
Body = TypeVar("Body", bound=ComputeRequest)


def request_deadline(request: Request) -> float:
    """The ``time.monotonic()`` instant at which the request's time budget runs out."""
    started = request.scope.get(STARTED_KEY) or time.monotonic()
    return float(started) + settings_of(request).request_timeout_s


class Forward(Exception):
    """Raised by a compute route whose request goes to a worker process: ``RequestRoute`` hands
    the whole request to the worker pool, with its ``body`` when the route has read it already."""

    def __init__(self, body: bytes | None = None) -> None:
        super().__init__()
        self.body = body


def admit(request: Request, inline: bool = True, body: bytes | None = None) -> bool:
    """Whether the request's computation runs inline: allowed (``inline``) and small (a thread
    hop would cost more than the work). One bound for the compute pool is refused here, before
    its body is read, when the pool is full (503); with worker processes, ``Forward`` is raised
    instead (with the ``body`` already read, if any)."""
    settings = settings_of(request)
    length = raw_header(request.scope, b"content-length")
    if inline and length is not None and length.isdigit() and int(length) <= settings.inline_compute_bytes:
        return True
    pool = request.app.compute_pool
    if pool.remote:
        raise Forward(body)
    pool.check_room()
    return False


async def run_compute(
    request: Request, job: Callable[[], T], inline: bool, deadline: float, reserved: object | None = None
) -> T:
    """Run ``job`` inline (see ``admit``), or in the compute pool: bounded, 503 when full, 504
    past ``deadline``; at once in a slot the caller ``reserved``."""
    if inline:
        try:
            return job()
        finally:
            if reserved is not None:
                request.app.compute_pool.release(reserved)
    return await request.app.compute_pool.run(job, deadline, reserved=reserved)  # type: ignore[no-any-return]


async def compute_response(
    request: Request,
    body: ComputeRequest,
    compute: Callable[[ComputeContext], dict[str, Any]],
    *,
    op: str,
    inline: bool,
    enforce_deadline: bool = True,
    interruptible: bool = True,
    reserved: object | None = None,
) -> JSONBytesResponse:
    """Decode, compute and encode: ``compute`` returns the response fields (wire-encoded through
    its context), to which ``meta`` is added. The time goes to the ``op``'s compute metric; a
    computation that ends past the request's time budget is a 504 (unless ``enforce_deadline``
    is off, for a stream that reports the deadline in its result). An ``interruptible``
    computation in the compute pool (the default) is stopped at its first torch operation past the
    budget; optimisation runs check their deadline between steps instead."""
    settings = settings_of(request)
    deadline = request_deadline(request)
    metrics = request.app.metrics

    def job() -> bytes:
        ctx = ComputeContext.of(body, settings)
        watch = Deadline(deadline, settings.request_timeout_s) if interruptible and not inline else nullcontext()
        try:
            with watch:
                fields = compute(ctx)
            return dump_json({**fields, "meta": ctx.meta()})
        except torch.OutOfMemoryError as exc:  # moving the inputs to the GPU can run out too
            raise out_of_memory("this request") from exc
        finally:
            metrics.observe_compute(op, time.perf_counter() - ctx.started)

    payload = await run_compute(request, job, inline, deadline, reserved)
    if enforce_deadline and time.monotonic() > deadline:
        raise DeadlineExceeded(
            f"The request's time budget of {settings.request_timeout_s:g} s ran out; send less, or ask for fewer steps."
        )
    return JSONBytesResponse(payload)


@dataclass
class Call(Generic[Body]):
    """A compute request admitted and read: its validated body, the app's settings, and where
    its computation runs."""

    request: Request
    body: Body
    settings: Settings
    inline: bool

    async def respond(
        self,
        compute: Callable[[ComputeContext], dict[str, Any]],
        *,
        op: str,
        enforce_deadline: bool = True,
        interruptible: bool = True,
        reserved: object | None = None,
    ) -> JSONBytesResponse:
        """``compute_response`` for this call (in the slot ``reserved`` by ``reserve``, if any)."""
        return await compute_response(
            self.request,
            self.body,
            compute,
            op=op,
            inline=self.inline,
            enforce_deadline=enforce_deadline,
            interruptible=interruptible,
            reserved=reserved,
        )

    async def reserve(self) -> object:
        """Take a compute slot now (503 when full, 504 past the deadline), for a computation whose
        response starts before it runs (a stream); ``respond(..., reserved=token)`` then uses it
        and frees it, or ``release(token)`` if the computation never runs."""
        return await self.request.app.compute_pool.acquire(request_deadline(self.request))

    def release(self, token: object) -> None:
        self.request.app.compute_pool.release(token)


def _on_gpu_elsewhere(request: Request, body: ComputeRequest) -> bool:
    """A request for a GPU, where worker processes own the GPUs (the server process never
    touches one)."""
    settings = settings_of(request)
    return bool(request.app.compute_pool.remote) and resolve_device(body.device, settings.device).type == "cuda"


async def accept(
    request: Request, model: type[Body], *, inline: bool = True, offload: Callable[[Body], bool] | None = None
) -> Call[Body]:
    """The preamble of every compute route: admitted (503 before the body is read when the pool
    is full), then the body read as ``model``. The computation runs inline only if ``inline``,
    the body is small and ``offload(body)`` is not true (a small body that asks for much)."""
    runs_inline = admit(request, inline)
    require_json(request)
    raw = await read_body(request)
    body = parse_json_body(raw, model)
    if runs_inline and ((offload is not None and offload(body)) or _on_gpu_elsewhere(request, body)):
        runs_inline = admit(request, inline=False, body=raw)
    return Call(request, body, settings_of(request), runs_inline)
