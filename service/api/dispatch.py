"""Where a computation runs: small ones on the event loop, the rest in a bounded thread pool."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread
from fastapi import Request

T = TypeVar("T")


async def run_compute(request: Request, job: Callable[[], T]) -> T:
    """Run ``job`` inline when the body is small (a thread hop costs more than the work),
    otherwise in the worker's compute pool of ``max_concurrency`` threads."""
    settings = request.app.state.settings
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) <= settings.inline_compute_bytes:
        return job()
    return await anyio.to_thread.run_sync(job, limiter=request.app.state.compute_limiter)
