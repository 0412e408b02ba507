"""The front's pool of compute worker processes.

Each worker process serves the requests forwarded to it one at a time. The front keeps the
admission (503 once ``count`` computing and ``max_queue`` waiting fill the pool, 504 past the
budget while waiting) and hands each worker the next request while it computes the current one,
so that under overload the worker never waits for the front's event loop. Around each request:

- a worker that dies (a crash, an out-of-memory kill) fails only the request it was computing:
  a 500 ``worker_crashed`` (an ``error`` event on a stream that has begun); the request it held
  next goes to another worker, and a new worker takes its place;
- a request still running at its deadline plus ``deadline_grace_s`` (the worker stops its own
  computations at the deadline; this is for those that do not) has its worker killed: a 504;
- a worker that has served ``worker_max_computations`` requests, or whose resident memory passed
  ``worker_max_rss_mb``, is replaced between requests: its successor starts while it still works,
  then takes its place, and the old one exits once its requests are answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import multiprocessing
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from service.api.asgi import STARTED_KEY, Metrics
from service.api.errors import REQUEST_ID_KEY
from service.api.streaming import PROGRESS_BUFFER, sse_event
from service.api.workers._channel import Arena, Channel, Kind, Message
from service.api.workers._worker import DEVICE_ERROR_EXIT, run_worker
from service.config import Settings
from service.errors import DeadlineExceeded, Overloaded, ServiceError, WorkerCrashed

logger = logging.getLogger("service.workers")

PIPELINE_DEPTH = 2
"""Requests a worker holds at once: the one it computes and the next."""
START_TIMEOUT_S = 120.0
"""How long a new worker may take to import, warm up and say it is ready."""
STOP_TIMEOUT_S = 10.0
"""How long a stopped worker may take to exit before it is killed."""
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
"""Waits between attempts to start a worker that keeps failing to start."""
FORWARDED_OUT = (b"accept-encoding", b"x-request-id")
"""Request headers the front handles itself (compression, the request id) and does not pass on."""
PROGRESS = b"event: progress\n"
"""How a progress event of a stream begins (each is one body message)."""
DIED = "died"
"""In an exchange's inbox: its worker died while computing it."""
WAKE = "wake"
"""In an exchange's inbox: its place changed (handed to a worker, back in the queue, abandoned)."""


@functools.cache
def _context() -> Any:
    """Workers fork from a clean server process that imported the service once (fast starts,
    and no fork of a process with threads); where there is none, they are spawned."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["service.api.workers._worker", "service.main"])
        return context
    return multiprocessing.get_context("spawn")


@dataclass(eq=False, repr=False)  # (a repr would print the body)
class Exchange:
    """One forwarded request, from its admission to the end of its response."""

    id: int
    meta: dict[str, Any]
    body: list[bytes]
    """As it arrived, in chunks."""
    deadline: float
    inbox: asyncio.Queue[Message | str] = field(default_factory=asyncio.Queue)
    worker: Worker | None = None
    begun: bool = False
    finished: bool = False
    """Its response has been sent whole."""
    abandoned: bool = False
    """The front is done with it (answered, or its client went away): never to be (re)sent."""


@dataclass(eq=False)
class Worker:
    """One worker process, as the front sees it."""

    index: int
    process: Any
    channel: Channel
    exchanges: dict[int, Exchange] = field(default_factory=dict)
    """The requests handed to it and not yet answered, in order."""
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    started: bool = False
    alive: bool = True
    accepting: bool = True
    """False once replaced or stopped: it gets no new requests."""
    recycling: bool = False
    """A successor is starting."""
    killed_for: str | None = None
    """Why the front killed it, so that its end is not counted as a crash."""
    computations: int = 0
    rss: int = 0
    gpu: dict[str, tuple[int, int]] = field(default_factory=dict)
    """GPU memory allocated and reserved by device, as of its last request."""

    def kill(self, reason: str) -> None:
        self.killed_for = self.killed_for or reason
        with contextlib.suppress(ProcessLookupError, AttributeError):
            self.process.kill()

    async def send(self, exchange: Exchange) -> None:
        with contextlib.suppress(OSError):  # (ConnectionError too) it died: its reader requeues the request
            await self.channel.send(Kind.REQUEST, {**exchange.meta, "id": exchange.id}, exchange.body)

    def post(self, kind: Kind, meta: dict[str, Any] | None = None) -> None:
        if self.alive and not self.channel.closed:
            self.channel.post(kind, meta)

    def computing(self) -> bool:
        return any(exchange.begun for exchange in self.exchanges.values())


@dataclass
class _Response:
    started: bool = False
    finished: bool = False
    events: bool = False


class WorkerPool:
    """Admission in front of ``count`` worker processes, each running the app of ``settings``."""

    remote = True

    def __init__(self, settings: Settings, metrics: Metrics, count: int) -> None:
        self.settings = settings
        self.metrics = metrics
        self.count = count
        self.max_queue = settings.max_queue
        self.slots: list[Worker | None] = [None] * count
        """The worker serving each slot."""
        self.live: set[Worker] = set()
        """Every worker process alive: the slots', successors starting, old ones finishing."""
        self.pending: deque[Exchange] = deque()
        self._ids = itertools.count()
        self._tasks: set[asyncio.Future[Any]] = set()
        """Successors starting."""
        self._readers: set[asyncio.Future[Any]] = set()
        self._stopping = False
        metrics.workers_alive.set_function(lambda: sum(1 for worker in self.live if worker.started))
        metrics.gpu_memory.source = self.gpu_memory

    def gpu_memory(self) -> dict[str, tuple[int, int]]:
        """GPU memory by device, summed over the live workers (as of their last requests)."""
        total: dict[str, tuple[int, int]] = {}
        for worker in self.live:
            for device, (held, cached) in worker.gpu.items():
                before = total.get(device, (0, 0))
                total[device] = (before[0] + held, before[1] + cached)
        return total

    @property
    def running(self) -> int:
        return sum(1 for worker in self.live if worker.computing())

    @property
    def waiting(self) -> int:
        return self._admitted() - self.running

    def _admitted(self) -> int:
        return len(self.pending) + sum(len(worker.exchanges) for worker in self.live)

    def check_room(self) -> None:
        """Overloaded (503) once ``count`` + ``max_queue`` requests are in."""
        if self._admitted() >= self.count + self.max_queue:
            self.metrics.rejections.labels("overloaded").inc()
            raise Overloaded(
                f"All {self.count} compute workers are busy and {self.waiting} requests are waiting; retry shortly.",
                retry_after=self.settings.retry_after_s,
            )

    # Starting and stopping

    async def start(self) -> None:
        """Start every worker; return once all are ready."""
        self.slots = list(await asyncio.gather(*(self._spawn(index) for index in range(self.count))))

    async def stop(self) -> None:
        """Ask every worker to exit once its requests are answered; kill those that do not."""
        self._stopping = True
        starting = list(self._tasks)
        for task in starting:
            task.cancel()
        await asyncio.gather(*starting, return_exceptions=True)
        workers = list(self.live)
        for worker in workers:
            worker.accepting = False
            worker.post(Kind.STOP)
        await asyncio.gather(*(self._reap(worker) for worker in workers))
        with anyio.move_on_after(STOP_TIMEOUT_S):  # each reader ends at its worker's end of file
            while self._readers:  # (a restart under way when the stop came adds one, which ends at once)
                await asyncio.gather(*self._readers, return_exceptions=True)

    def worker_settings(self, index: int) -> Settings:
        """What a worker runs: the same settings, computing in its own threads, its device its
        own GPU when there are several, and its share of the cores."""
        settings = self.settings
        device = settings.device
        if device in ("auto", "cuda") and settings.cuda_devices() > 1:
            device = f"cuda:{index % settings.cuda_devices()}"
        return settings.model_copy(
            update={
                "compute_processes": 0,
                "device": device,
                "torch_threads": settings.effective_torch_threads(),
                "max_concurrency": 1,
                "api_keys": "",
                "cors_origins": "",
                "access_log": False,
            }
        )

    async def _spawn(self, index: int) -> Worker:
        """A new worker process for slot ``index``, started and ready."""
        front, back = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        to_worker, to_front = Arena.create(), Arena.create()
        process = _context().Process(
            target=run_worker,
            args=(back, self.worker_settings(index).model_dump_json()),
            name=f"gradient-worker-{index}",
            daemon=True,
        )
        try:
            await anyio.to_thread.run_sync(process.start)
            socket.send_fds(front, [b"arenas"], [to_worker.fd, to_front.fd])
            channel = await Channel.open(front, outgoing=to_worker, incoming=to_front)
        except BaseException:  # (cancelled too: stopping while a worker starts)
            front.close()
            to_worker.close()
            to_front.close()
            if process.pid is not None:
                process.kill()
            raise
        finally:
            back.close()
        worker = Worker(index, process, channel)
        self.live.add(worker)
        reader = asyncio.ensure_future(self._read(worker))
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        with anyio.move_on_after(START_TIMEOUT_S):
            await worker.ready.wait()
        if not (worker.started and worker.alive) or self._stopping:
            worker.kill("start")
            raise RuntimeError(f"compute worker {index} did not start (exit code {process.exitcode})")
        logger.info("compute worker %d started (pid %d)", index, process.pid)
        return worker

    async def _read(self, worker: Worker) -> None:
        """Route the worker's messages until its channel closes; then account for its end."""
        try:
            while (message := await worker.channel.receive()) is not None:
                if message.kind == Kind.READY:
                    worker.started = True
                    worker.ready.set()
                elif message.kind == Kind.OBSERVE:
                    observe: Callable[[str, float], None] = self.metrics.observe_compute
                    if message.meta["metric"] == "compilation":
                        observe = self.metrics.observe_compilation
                    observe(message.meta["label"], message.meta["value"])
                else:
                    self._route(worker, message)
        except Exception:  # a message this front cannot read: the worker cannot be trusted either
            logger.exception("compute worker %d sent what its front could not read; ending it", worker.index)
            worker.kill("crashed")
        await self._ended(worker)

    def _route(self, worker: Worker, message: Message) -> None:
        exchange = worker.exchanges.get(message.meta["id"])
        if exchange is None:
            return
        if message.kind == Kind.BEGIN:
            exchange.begun = True
        elif (
            message.kind == Kind.BODY
            and message.data.startswith(PROGRESS)
            and exchange.inbox.qsize() >= PROGRESS_BUFFER
        ):
            return  # the client reads slowly: drop progress events, as a stream in one process does
        exchange.inbox.put_nowait(message)
        if message.kind == Kind.END:
            del worker.exchanges[exchange.id]
            worker.computations += exchange.begun
            worker.rss = message.meta["rss"]
            worker.gpu = {device: (held, cached) for device, (held, cached) in message.meta["gpu"].items()}
            self._after(worker)
            self._dispatch()  # at once: the worker may be idle

    async def _ended(self, worker: Worker) -> None:
        """The worker's channel closed: fail the request it was computing, hand the others on,
        and put a new worker in its slot."""
        worker.alive = False
        worker.ready.set()  # wake a start that waits for it
        self.live.discard(worker)
        worker.channel.close()
        requeued = []
        for exchange in worker.exchanges.values():
            if exchange.begun:
                exchange.inbox.put_nowait(DIED)
            elif not exchange.abandoned:  # it never ran: another worker takes it, first in line
                exchange.worker = None
                requeued.append(exchange)
                exchange.inbox.put_nowait(WAKE)
        worker.exchanges.clear()
        self.pending.extendleft(reversed(requeued))
        self._dispatch()
        await self._reap(worker)
        for arena in (worker.channel.outgoing, worker.channel.incoming):
            arena.close()
        if self._stopping or not worker.started or self.slots[worker.index] is not worker:
            return
        reason = worker.killed_for or ("device_error" if worker.process.exitcode == DEVICE_ERROR_EXIT else "crashed")
        self.metrics.worker_restarts.labels(reason).inc()
        logger.warning(
            "compute worker %d (pid %d) ended (%s, exit code %s); starting another",
            worker.index,
            worker.process.pid,
            reason,
            worker.process.exitcode,
        )
        self.slots[worker.index] = None
        for attempt in itertools.count():
            if self._stopping:
                return
            try:
                self.slots[worker.index] = await self._spawn(worker.index)
                break
            except Exception:
                logger.exception("compute worker %d failed to start", worker.index)
                await asyncio.sleep(RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)])
        self._dispatch()

    async def _reap(self, worker: Worker) -> None:
        """Wait for the process to exit; kill it past STOP_TIMEOUT_S."""
        process = worker.process
        if not await anyio.to_thread.run_sync(lambda: process.join(STOP_TIMEOUT_S) or not process.is_alive()):
            worker.kill("stop")
            await anyio.to_thread.run_sync(process.join, STOP_TIMEOUT_S)

    def _background(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Recycling

    def _after(self, worker: Worker) -> None:
        """After a request: if the worker is due for replacement, start its successor (it goes on
        serving meanwhile)."""
        reason = self._recycle_reason(worker)
        if reason and not worker.recycling and not self._stopping and self.slots[worker.index] is worker:
            worker.recycling = True
            self.metrics.worker_recycles.labels(reason).inc()
            self._background(self._replace(worker))

    def _recycle_reason(self, worker: Worker) -> str | None:
        settings = self.settings
        if settings.worker_max_computations and worker.computations >= settings.worker_max_computations:
            return "computations"
        if settings.worker_max_rss_mb and worker.rss >= settings.worker_max_rss_mb * 2**20:
            return "memory"
        return None

    async def _replace(self, old: Worker) -> None:
        """Start a successor; once it is ready, it takes the slot and the old worker exits after
        answering what it holds."""
        try:
            successor = await self._spawn(old.index)
        except Exception:
            logger.exception("a successor for compute worker %d failed to start", old.index)
            old.recycling = False  # asked again after its next request
            return
        if self.slots[old.index] is not old:  # the old one died meanwhile: its slot has a new worker
            successor.post(Kind.STOP)
            return
        old.accepting = False
        old.post(Kind.STOP)
        self.slots[old.index] = successor
        self._dispatch()

    # Serving

    def _dispatch(self) -> None:
        """Hand the waiting requests to the workers with room, the least busy first."""
        while self.pending:
            candidates = [
                worker
                for worker in self.slots
                if worker is not None and worker.alive and worker.accepting and len(worker.exchanges) < PIPELINE_DEPTH
            ]
            if not candidates:
                return
            worker = min(candidates, key=lambda candidate: len(candidate.exchanges))
            exchange = self.pending.popleft()
            exchange.worker = worker
            worker.exchanges[exchange.id] = exchange
            exchange.inbox.put_nowait(WAKE)
            self._background(worker.send(exchange))

    async def forward(self, scope: Scope, receive: Receive, send: Send, body: bytes | None) -> None:
        """Serve the request in a worker: admitted (503), its body read (unless given), queued
        (504 past the budget), then the worker's response relayed as it comes."""
        self.check_room()
        if body is None:
            chunks = await _body_chunks(receive)
            self.check_room()
        else:
            chunks = [body]
        deadline = scope[STARTED_KEY] + self.settings.request_timeout_s
        exchange = Exchange(next(self._ids), _wire_scope(scope), chunks, deadline)
        self.pending.append(exchange)
        self._dispatch()
        try:
            await self._serve(exchange, receive, send)
        finally:
            self._forget(exchange)

    async def _pass_disconnect(self, receive: Receive, exchange: Exchange) -> None:
        """When the client goes away, the front is done with its request (a stream stops)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self._forget(exchange)

    def _forget(self, exchange: Exchange) -> None:
        """The front is done with ``exchange`` (answered, or its client went away): out of the
        queue, or, in a worker that has not answered it all, dropped there (a stream stops; one
        not begun is skipped)."""
        exchange.abandoned = True
        if exchange in self.pending:
            self.pending.remove(exchange)
            exchange.inbox.put_nowait(WAKE)
        worker = exchange.worker
        if worker is not None and exchange.id in worker.exchanges and not exchange.finished:
            worker.post(Kind.DISCONNECT, {"id": exchange.id})

    async def _serve(self, exchange: Exchange, receive: Receive, send: Send) -> None:
        response = _Response()
        failure: ServiceError | None = None
        bug: Exception | None = None
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._pass_disconnect, receive, exchange)
            try:
                await self._relay(exchange, send, response)
            except ServiceError as error:
                failure = error
            except Exception as error:  # raised below, not wrapped in the task group's ExceptionGroup
                bug = error
            tasks.cancel_scope.cancel()
        if bug is not None:
            raise bug
        if failure is None or response.finished:
            return
        if not response.started:
            raise failure
        if response.events:
            await send({"type": "http.response.body", "body": sse_event("error", failure.body()), "more_body": False})
            return
        raise RuntimeError("the compute worker failed in the middle of a response") from failure

    async def _relay(self, exchange: Exchange, send: Send, response: _Response) -> None:
        """The worker's response, sent on as it comes, until the worker says it is done; bounded
        in time as the comments say."""
        grace = self.settings.deadline_grace_s
        while not exchange.abandoned:
            # Waiting in the front: until the deadline. In a worker: until the deadline plus the
            # grace, computing or next in line (the worker answers a late one itself).
            limit = exchange.deadline if exchange.worker is None else exchange.deadline + grace
            with anyio.move_on_after(limit - time.monotonic()) as timer:
                message = await exchange.inbox.get()
            if timer.cancelled_caught:
                worker = exchange.worker
                if worker is None:
                    raise DeadlineExceeded("The request's time budget ran out while it waited for a compute worker.")
                if exchange.begun:
                    worker.kill("deadline")
                    raise DeadlineExceeded(
                        f"The computation ran past its time budget of {self.settings.request_timeout_s:g} s and "
                        f"was stopped {grace:g} s later; send less, or ask for less."
                    )
                if not worker.computing():  # idle, yet it did not begin it: stuck outside any request
                    worker.kill("deadline")
                    raise DeadlineExceeded(
                        f"The compute worker holding this request did not begin it within its time budget of "
                        f"{self.settings.request_timeout_s:g} s and {grace:g} s more, and was stopped."
                    )
                raise DeadlineExceeded("The request's time budget ran out while it waited for a compute worker.")
            if message == DIED:
                raise WorkerCrashed(
                    "The compute worker running this request stopped unexpectedly (a crash, or out of memory); "
                    "it has been replaced. Retrying the same request may fail the same way."
                )
            if isinstance(message, str):  # WAKE: look at its place again
                continue
            if message.kind == Kind.START:
                headers = [
                    (name.encode("latin-1"), value.encode("latin-1"))
                    for name, value in message.meta["headers"]
                    if name != "x-request-id"  # the front's RequestMiddleware adds it
                ]
                response.events = any(
                    name == b"content-type" and value.startswith(b"text/event-stream") for name, value in headers
                )
                await send({"type": "http.response.start", "status": message.meta["status"], "headers": headers})
                response.started = True
            elif message.kind == Kind.BODY:
                more = message.meta["more"]
                await send({"type": "http.response.body", "body": message.data, "more_body": more})
                response.finished = exchange.finished = not more
            elif message.kind == Kind.END:
                return


async def _body_chunks(receive: Receive) -> list[bytes]:
    """The request's body as it arrives (the arena takes the chunks: no join)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks


def _wire_scope(scope: Scope) -> dict[str, Any]:
    """What the worker needs of the request's scope, as JSON."""
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]]
    return {
        "http_version": scope.get("http_version", "1.1"),
        "method": scope["method"],
        "scheme": scope.get("scheme", "http"),
        "path": scope["path"],
        "raw_path": (scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
        "query_string": scope.get("query_string", b"").decode("latin-1"),
        "root_path": scope.get("root_path", ""),
        "headers": [
            *((name, value) for name, value in headers if name.encode("latin-1") not in FORWARDED_OUT),
            ("x-request-id", scope[REQUEST_ID_KEY]),
        ],
        "client": scope.get("client"),
        "server": scope.get("server"),
        "started": scope[STARTED_KEY],
        "request_id": scope[REQUEST_ID_KEY],
    }
