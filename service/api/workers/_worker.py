"""A compute worker process: the same application, serving the requests its front forwards, one
at a time, over a ``Channel``; computing in its own thread pool of one, with its own interpreter
lock.

It ignores SIGINT and SIGTERM (the front decides when it stops: ``STOP`` lets the request in hand
finish) and dies with the front (Linux's parent-death signal, and the channel's end of file).
"""

from __future__ import annotations

import asyncio
import logging.config
import os
import signal
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from starlette.types import Message as AsgiMessage

from service import lifecycle
from service.api.asgi import STARTED_KEY, Metrics, local_gpu_memory
from service.api.errors import REQUEST_ID_KEY
from service.api.workers._channel import Arena, Channel, Kind, Message
from service.compute.runtime import cuda_broken
from service.config import Settings
from service.logs import logging_config

logger = logging.getLogger("service.workers")

DEVICE_ERROR_EXIT = 3
"""The exit status of a worker whose CUDA context broke (the front counts it as a device error)."""


def run_worker(sock: socket.socket, settings_json: str) -> None:
    """The worker process's entry point (``multiprocessing`` calls it in the child)."""
    lifecycle.die_with_parent()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    settings = Settings.model_validate_json(settings_json)
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    if settings.device.startswith("cuda:"):  # its own GPU is the current one (health checks look at it)
        import torch

        index = int(settings.device.removeprefix("cuda:"))
        if index < settings.cuda_devices():  # (one configured but absent is reported by /v1/info)
            torch.cuda.set_device(index)
    asyncio.run(_serve(sock, settings))


def resident_bytes() -> int:
    """This process's resident memory now (Linux), or its peak elsewhere."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def ended(request_id: int) -> dict[str, Any]:
    """The END message of a request: with this process's memory, for the front's recycling and
    metrics."""
    return {"id": request_id, "rss": resident_bytes(), "gpu": local_gpu_memory()}


class RelayedMetrics(Metrics):
    """The worker's metrics: the compute and compile times go to the front, which exports them."""

    def __init__(self, relay: Callable[[str, str, float], None]) -> None:
        super().__init__()
        self.relay = relay

    def observe_compute(self, op: str, seconds: float) -> None:
        self.relay("compute", op, seconds)

    def observe_compilation(self, outcome: str, seconds: float) -> None:
        self.relay("compilation", outcome, seconds)


async def _serve(sock: socket.socket, settings: Settings) -> None:
    from service.main import create_app  # the app imports this package

    _, fds, _, _ = socket.recv_fds(sock, 16, 2)
    channel = await Channel.open(sock, outgoing=Arena(fds[1]), incoming=Arena(fds[0]))
    loop = asyncio.get_running_loop()

    def relay(metric: str, label: str, seconds: float) -> None:  # from any thread
        loop.call_soon_threadsafe(channel.post, Kind.OBSERVE, {"metric": metric, "label": label, "value": seconds})

    app = create_app(settings)
    app.metrics = RelayedMetrics(relay)
    async with app.router.lifespan_context(app):
        await channel.send(Kind.READY, {"pid": os.getpid()})
        line = Line(app, channel)
        serving, reading = asyncio.create_task(line.serve()), asyncio.create_task(line.read())
        done, _ = await asyncio.wait({serving, reading}, return_when=asyncio.FIRST_COMPLETED)
        if reading in done:  # the front went away: nobody is left to answer
            serving.cancel()
        else:  # stopped, with nothing left to do
            reading.cancel()
    channel.close()


class Line:
    """The requests sent to this worker, served one after another in the order they came. The
    front sends the next while this one computes, so that it starts at once; one the front gave
    up on before it began (``DISCONNECT``) is skipped."""

    def __init__(self, app: Any, channel: Channel) -> None:
        self.app = app
        self.channel = channel
        self.waiting: deque[Message] = deque()
        self.arrived = asyncio.Event()
        self.dropped: set[int] = set()
        self.current: Served | None = None
        self.stopping = False

    async def read(self) -> None:
        """Take the front's messages until it closes the channel."""
        while (message := await self.channel.receive()) is not None:
            if message.kind == Kind.REQUEST:
                self.waiting.append(message)
            elif message.kind == Kind.DISCONNECT:
                gone = message.meta["id"]
                if self.current is not None and self.current.id == gone:
                    self.current.disconnected.set()
                elif any(waiting.meta["id"] == gone for waiting in self.waiting):
                    self.dropped.add(gone)
            elif message.kind == Kind.STOP:
                self.stopping = True
            self.arrived.set()

    async def serve(self) -> None:
        """Serve the waiting requests; return once stopped and none is left."""
        while True:
            while not self.waiting:
                if self.stopping:
                    return
                self.arrived.clear()
                await self.arrived.wait()
            request = self.waiting.popleft()
            if request.meta["id"] in self.dropped:
                self.dropped.discard(request.meta["id"])
                self.channel.post(Kind.END, ended(request.meta["id"]))
                continue
            self.current = Served(self.app, self.channel, request)
            await self.current.run()
            self.current = None
            if cuda_broken():  # a device-side assert poisoned the context: only a new process recovers
                logger.error("the CUDA context is unusable after the last request; this worker exits")
                await self.channel.writer.drain()
                os._exit(DEVICE_ERROR_EXIT)


class Served:
    """One forwarded request, served by the app with ``receive`` and ``send`` over the channel."""

    def __init__(self, app: Any, channel: Channel, request: Message) -> None:
        self.app = app
        self.channel = channel
        self.request = request
        self.id: int = request.meta["id"]
        self.disconnected = asyncio.Event()
        self._body_sent = False

    async def run(self) -> None:
        meta = self.request.meta
        self.channel.post(Kind.BEGIN, {"id": self.id})
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": meta["http_version"],
            "method": meta["method"],
            "scheme": meta["scheme"],
            "path": meta["path"],
            "raw_path": meta["raw_path"].encode("latin-1"),
            "query_string": meta["query_string"].encode("latin-1"),
            "root_path": meta["root_path"],
            "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in meta["headers"]],
            "client": meta["client"] and tuple(meta["client"]),
            "server": meta["server"] and tuple(meta["server"]),
            "state": {},
            STARTED_KEY: meta["started"],
            REQUEST_ID_KEY: meta["request_id"],
        }
        try:
            await self.app(scope, self.receive, self.send)
        except Exception:  # answered already (the app answers everything else); the front ends it
            logger.exception("a forwarded request failed after its response began")
        self.channel.post(Kind.END, ended(self.id))

    async def receive(self) -> AsgiMessage:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.request.data, "more_body": False}
        await self.disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: AsgiMessage) -> None:
        if message["type"] == "http.response.start":
            headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in message["headers"]]
            await self.channel.send(Kind.START, {"id": self.id, "status": message["status"], "headers": headers})
        elif message["type"] == "http.response.body":
            meta = {"id": self.id, "more": message.get("more_body", False)}
            await self.channel.send(Kind.BODY, meta, message.get("body", b""))
