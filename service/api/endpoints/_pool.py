"""Admission to computation: at most ``slots`` computations at once, at most ``queue`` waiting.

Beyond both, a request is refused at once (503 with Retry-After) rather than left to pile up; a
request that waits past its time budget gets a 504. ``ComputePool`` runs the computations in
threads of this process; ``service.api.workers.WorkerPool`` forwards them to worker processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from service.errors import DeadlineExceeded, Overloaded

T = TypeVar("T")


class Admission:
    """Bounded concurrency and a bounded wait queue, on one event loop."""

    remote = False
    """Whether computations leave this process (routes then forward whole requests)."""

    def __init__(
        self, slots: int, queue: int, retry_after_s: int = 1, on_overload: Callable[[], None] | None = None
    ) -> None:
        self.limiter = anyio.CapacityLimiter(slots)
        self.max_queue = queue
        self.retry_after_s = retry_after_s
        self.waiting = 0
        self.on_overload = on_overload
        """Called for every request refused because the pool is full (for the metrics)."""

    @property
    def running(self) -> int:
        return int(self.limiter.borrowed_tokens)

    def check_room(self) -> None:
        """Raise Overloaded when every slot is busy and the queue is full: before a request's body
        is even read, so that refusing costs as little as possible."""
        if self.limiter.available_tokens == 0 and self.waiting >= self.max_queue:
            if self.on_overload is not None:
                self.on_overload()
            raise Overloaded(
                f"All {int(self.limiter.total_tokens)} compute slots are busy and {self.waiting} requests are "
                "waiting; retry shortly.",
                retry_after=self.retry_after_s,
            )

    async def acquire(self, deadline: float) -> object:
        """Take a slot, waiting in the queue until ``deadline`` (a monotonic instant) at most;
        return the token that ``release`` gives back (from any task)."""
        self.check_room()
        self.waiting += 1
        token = object()
        try:
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())) as waited:
                await self.limiter.acquire_on_behalf_of(token)
        finally:
            self.waiting -= 1
        if waited.cancelled_caught:
            raise DeadlineExceeded("The request's time budget ran out while it waited for a compute slot.")
        return token

    def release(self, token: object) -> None:
        self.limiter.release_on_behalf_of(token)


class ComputePool(Admission):
    """Computations in worker threads of this process, one per slot."""

    def __init__(
        self, slots: int, queue: int, retry_after_s: int = 1, on_overload: Callable[[], None] | None = None
    ) -> None:
        super().__init__(slots, queue, retry_after_s, on_overload)
        # The worker threads' own limiter: anyio's default one has 40 threads, shared with
        # FastAPI's sync routes.
        self.threads = anyio.CapacityLimiter(slots)

    async def run(self, job: Callable[[], T], deadline: float, *, reserved: object | None = None) -> T:
        """``job()`` in a worker thread once a slot is free (at once in a slot ``reserved`` with
        ``acquire``); the slot is released when it returns."""
        token = reserved if reserved is not None else await self.acquire(deadline)
        try:
            return await anyio.to_thread.run_sync(job, limiter=self.threads)
        finally:
            self.release(token)
