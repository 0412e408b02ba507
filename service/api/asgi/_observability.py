"""Per-request bookkeeping: an X-Request-ID, one access log line, and Prometheus metrics."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import REQUEST_ID_KEY, handle_unexpected

access_logger = logging.getLogger("service.access")

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces
STARTED_KEY = "gradient.started"
"""Scope key: the request's ``time.monotonic()`` start, from which its time budget runs."""
CLIENT_CLOSED = 499

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


GpuMemory = dict[str, tuple[int, int]]
"""Bytes allocated and reserved, by device name."""


def local_gpu_memory() -> GpuMemory:
    """GPU memory allocated and reserved by this process, per device (only from devices torch
    has already initialised: never creates a CUDA context)."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):  # type: ignore[no-untyped-call]
        return {}
    return {
        f"cuda:{index}": (torch.cuda.memory_allocated(index), torch.cuda.memory_reserved(index))
        for index in range(torch.cuda.device_count())
    }


class GpuMemoryCollector(Collector):
    """GPU memory allocated and reserved, per device, read at scrape time from ``source`` (this
    process's, or its compute workers' as of their last request)."""

    def __init__(self) -> None:
        self.source: Callable[[], GpuMemory] = local_gpu_memory

    def collect(self) -> Iterable[GaugeMetricFamily]:
        memory = self.source()
        if not memory:
            return
        allocated = GaugeMetricFamily(
            "gradient_gpu_memory_allocated_bytes", "GPU memory held by tensors.", labels=["device"]
        )
        reserved = GaugeMetricFamily(
            "gradient_gpu_memory_reserved_bytes", "GPU memory reserved by the caching allocator.", labels=["device"]
        )
        for device, (held, cached) in sorted(memory.items()):
            allocated.add_metric([device], held)
            reserved.add_metric([device], cached)
        yield allocated
        yield reserved


class Metrics:
    """The service's metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gradient_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gradient_http_request_duration_seconds",
            "Time from request to the end of the response, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute = Histogram(
            "gradient_compute_duration_seconds",
            "Time spent computing (decode, torch, encode), by op.",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight_count = 0
        self.in_flight = Gauge("gradient_http_requests_in_flight", "Requests being answered.", registry=self.registry)
        self.in_flight.set_function(lambda: self.in_flight_count)  # a plain int: no lock per request
        self.computing = Gauge(
            "gradient_compute_running", "Computations running in the compute pool.", registry=self.registry
        )
        self.queued = Gauge(
            "gradient_compute_queued", "Computations waiting for a compute slot.", registry=self.registry
        )
        self.rejections = Counter(
            "gradient_rejections",
            "Requests refused: overloaded (503), deadline (504), unauthorized (401), too_large (413).",
            ["reason"],
            registry=self.registry,
        )
        self.compilations = Histogram(
            "gradient_compilations_seconds",
            "Background compiles of optimiser steps, by outcome (compiled, failed).",
            ["outcome"],
            buckets=(1, 2, 5, 10, 20, 40, 80, 160),
            registry=self.registry,
        )
        self.workers_alive = Gauge(
            "gradient_workers_alive",
            "Compute worker processes alive (0 when computing in threads).",
            registry=self.registry,
        )
        self.worker_restarts = Counter(
            "gradient_worker_restarts",
            "Compute worker processes replaced after they ended: crashed, deadline (killed past budget + grace), "
            "device_error (a broken CUDA context).",
            ["reason"],
            registry=self.registry,
        )
        self.worker_recycles = Counter(
            "gradient_worker_recycles",
            "Compute worker processes replaced between requests: computations or memory (their limit reached).",
            ["reason"],
            registry=self.registry,
        )
        self.gpu_memory = GpuMemoryCollector()
        self.registry.register(self.gpu_memory)
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: .labels() takes a lock and builds a tuple every call."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_compute(self, op: str, seconds: float) -> None:
        self._child(self.compute, op).observe(seconds)

    def observe_compilation(self, outcome: str, seconds: float) -> None:
        self._child(self.compilations, outcome).observe(seconds)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self._child(self.requests, method, route, str(status)).inc()
        self._child(self.latency, method, route).observe(seconds)
        if status in REJECTION_REASONS:
            self.rejections.labels(REJECTION_REASONS[status]).inc()


REJECTION_REASONS = {401: "unauthorized", 413: "too_large", 504: "deadline"}
"""Refusals counted from the status alone; "overloaded" is counted by the compute pool, since
503 also means starting, draining or out of memory."""


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"  # unmatched paths would explode the label set


class RequestMiddleware:
    """Gives every HTTP request an X-Request-ID (the client's, when it sends a sane one), echoes
    it in the response, logs one access line and records the request's metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope.setdefault(STARTED_KEY, time.monotonic())  # a worker process keeps its front's
        request_id = None
        for key, value in scope["headers"]:
            if key == REQUEST_ID_HEADER and _VALID_REQUEST_ID.fullmatch(value):
                request_id = value
                break
        if request_id is None:
            request_id = os.urandom(16).hex().encode()
        scope[REQUEST_ID_KEY] = request_id.decode()
        status = 0
        sent_bytes = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent_bytes
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id)]
            elif message["type"] == "http.response.body":
                sent_bytes += len(message.get("body", b""))
            await send(message)

        self.metrics.in_flight_count += 1
        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            status = status or CLIENT_CLOSED  # nobody to answer: nginx's 499, for the log and metrics
        except Exception as exc:
            if status:  # the response has begun: nothing better to do than let the server cut it
                raise
            # Answered here rather than by Starlette's outermost handler, so that the 500 carries
            # the request id and is counted like any other answer.
            response = await handle_unexpected(Request(scope), exc)
            await response(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight_count -= 1
            status = status or CLIENT_CLOSED
            seconds = time.perf_counter() - started
            route = _route_template(scope)
            self.metrics.observe_request(scope["method"], route, status, seconds)
            if self.access_log:
                client = scope.get("client")
                # As sent, still percent-encoded: a decoded %0A would start a forged log line.
                path = scope.get("raw_path", b"").decode("latin-1") or scope["path"].encode("unicode_escape").decode()
                access_logger.info(
                    "%s %s %d %.1fms",
                    scope["method"],
                    path,
                    status,
                    seconds * 1000,
                    extra={
                        "request_id": scope[REQUEST_ID_KEY],
                        "method": scope["method"],
                        "path": path,
                        "route": route,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                        "bytes": sent_bytes,
                        "client": client[0] if client else None,
                    },
                )
