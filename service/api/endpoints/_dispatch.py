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
from service.api.endpoints._body import read_json_body
from service.api.endpoints._context import ComputeContext
from service.api.endpoints._settings import settings_of
from service.api.responses import JSONBytesResponse, dump_json
from service.api.schemas import ComputeRequest
from service.compute.budgets import Deadline
from service.compute.runtime import out_of_memory
from service.config import Settings
from service.errors import DeadlineExceeded

T = TypeVar("T")
Body = TypeVar("Body", bound=ComputeRequest)


def request_deadline(request: Request) -> float:
    """The ``time.monotonic()`` instant at which the request's time budget runs out."""
    started = request.scope.get(STARTED_KEY) or time.monotonic()
    return float(started) + settings_of(request).request_timeout_s


def admit(request: Request, inline: bool = True) -> bool:
    """Whether the request's computation runs inline: allowed (``inline``) and small (a thread
    hop would cost more than the work). One bound for the compute pool is refused here, before
    its body is read, when the pool is full (503)."""
    settings = settings_of(request)
    length = raw_header(request.scope, b"content-length")
    if inline and length is not None and length.isdigit() and int(length) <= settings.inline_compute_bytes:
        return True
    request.app.compute_pool.check_room()
    return False


async def run_compute(request: Request, job: Callable[[], T], inline: bool, deadline: float) -> T:
    """Run ``job`` inline (see ``admit``), or in the compute pool: bounded, 503 when full, 504
    past ``deadline``."""
    if inline:
        return job()
    return await request.app.compute_pool.run(job, deadline)  # type: ignore[no-any-return]


async def compute_response(
    request: Request,
    body: ComputeRequest,
    compute: Callable[[ComputeContext], dict[str, Any]],
    *,
    op: str,
    inline: bool,
    enforce_deadline: bool = True,
    interruptible: bool = True,
) -> JSONBytesResponse:
    """Decode, compute and encode: ``compute`` returns the response fields (wire-encoded through
    its context), to which ``meta`` is added. The time goes to the ``op``'s compute metric; a
    computation that ends past the request's time budget is a 504 (unless ``enforce_deadline``
    is off, for a stream that reports the deadline in its result). An ``interruptible``
    computation in the compute pool (the default) is stopped at its first torch operation past the
    budget; optimisation runs check their deadline between steps instead."""
    settings = settings_of(request)
    deadline = request_deadline(request)
    histogram = request.app.metrics.compute_histogram(op)

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
            histogram.observe(time.perf_counter() - ctx.started)

    payload = await run_compute(request, job, inline, deadline)
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
    ) -> JSONBytesResponse:
        """``compute_response`` for this call."""
        return await compute_response(
            self.request,
            self.body,
            compute,
            op=op,
            inline=self.inline,
            enforce_deadline=enforce_deadline,
            interruptible=interruptible,
        )


async def accept(
    request: Request, model: type[Body], *, inline: bool = True, offload: Callable[[Body], bool] | None = None
) -> Call[Body]:
    """The preamble of every compute route: admitted (503 before the body is read when the pool
    is full), then the body read as ``model``. The computation runs inline only if ``inline``,
    the body is small and ``offload(body)`` is not true (a small body that asks for much)."""
    runs_inline = admit(request, inline)
    body = await read_json_body(request, model)
    if runs_inline and offload is not None and offload(body):
        runs_inline = admit(request, inline=False)
    return Call(request, body, settings_of(request), runs_inline)
