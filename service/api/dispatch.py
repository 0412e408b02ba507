"""Where a computation runs (small ones on the event loop, the rest in a bounded thread pool),
and the one way every compute route turns its result into a response."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import Request

from service.api.context import ComputeContext
from service.api.deps import settings_of
from service.api.responses import JSONBytesResponse, dump_json
from service.api.schemas import ComputeRequest

T = TypeVar("T")


async def run_compute(request: Request, job: Callable[[], T], inline: bool = True) -> T:
    """Run ``job`` inline when allowed and the body is small (a thread hop costs more than the
    work), otherwise in the worker's compute pool of ``max_concurrency`` threads."""
    settings = settings_of(request)
    length = request.headers.get("content-length")
    if inline and length is not None and length.isdigit() and int(length) <= settings.inline_compute_bytes:
        return job()
    return await anyio.to_thread.run_sync(job, limiter=request.app.state.compute_limiter)


async def compute_response(
    request: Request,
    body: ComputeRequest,
    compute: Callable[[ComputeContext], dict[str, Any]],
    inline: bool = True,
) -> JSONBytesResponse:
    """Decode, compute and encode in the compute pool: ``compute`` returns the response fields
    (wire-encoded through its context), to which ``meta`` is added."""

    def job() -> bytes:
        ctx = ComputeContext.of(body, settings_of(request))
        return dump_json({**compute(ctx), "meta": ctx.meta()})

    return JSONBytesResponse(await run_compute(request, job, inline))
