"""Server-sent events for a long computation: ``progress`` events while it runs (dropped, never
queued without bound, when the reader is slow), then one ``result`` or ``error`` event. A client
that disconnects cancels the computation."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.from_thread
from fastapi import Request
from fastapi.responses import StreamingResponse
from fastapi.sse import format_sse_event
from starlette.types import Receive, Scope, Send

from service.api.errors import internal_error
from service.api.responses import JSONBytesResponse, dump_json
from service.errors import ServiceError

PROGRESS_BUFFER = 64
"""Progress events waiting for a slow reader; past it, new ones are dropped (the result never is)."""


def sse_event(kind: str, data: Any = None, raw: bytes | None = None) -> bytes:
    """One event: ``data`` as JSON, or ``raw`` JSON bytes as they are."""
    text = (raw if raw is not None else dump_json(data)).decode()
    return format_sse_event(data_str=text, event=kind)


class EventStream:
    """The events of one streamed computation. The computation, in a worker thread, calls
    ``progress``; ``cancelled`` turns true once nobody is listening."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self._cancelled = threading.Event()
        self._events, self._received = anyio.create_memory_object_stream[bytes](max_buffer_size=PROGRESS_BUFFER)

    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def progress(self, data: Any) -> None:
        """Send a ``progress`` event from a worker thread; dropped if the reader lags."""
        try:
            anyio.from_thread.run_sync(self._events.send_nowait, sse_event("progress", data))
        except anyio.WouldBlock:
            pass
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._cancelled.set()  # nobody is listening any more

    def response(
        self, result: Callable[[], Awaitable[JSONBytesResponse]], unused: Callable[[], None] | None = None
    ) -> StreamingResponse:
        """The streaming response: ``result()`` runs the computation and its body becomes the
        ``result`` event (a service error, or a bug, the ``error`` event). ``unused()`` is called
        if the response ends before ``result()`` was (to free a slot reserved for it)."""
        called = False

        async def produce() -> None:
            nonlocal called
            async with self._events:
                try:
                    called = True
                    response = await result()
                    await self._events.send(sse_event("result", raw=bytes(response.body)))
                except ServiceError as error:
                    await self._events.send(sse_event("error", error.body()))
                except Exception:
                    body = internal_error(self.request.scope, "in a streamed computation")
                    await self._events.send(sse_event("error", body))

        async def stream() -> AsyncIterator[bytes]:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(produce)
                try:
                    async with self._received:
                        async for event in self._received:
                            yield event
                finally:
                    self._cancelled.set()  # the client went away (or the stream ended): stop computing

        def if_unused() -> None:
            if not called:
                self._events.close()
                self._received.close()
                if unused is not None:
                    unused()

        return _Stream(stream(), if_unused)


class _Stream(StreamingResponse):
    """An event stream that calls ``finally_`` when it ends, however it ends."""

    def __init__(self, events: AsyncIterator[bytes], finally_: Callable[[], None]) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.finally_ = finally_

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.finally_()


def wants_events(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")
