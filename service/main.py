"""The ASGI application: ``create_app(settings)`` builds one; ``service.main:app`` is the default."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__, lifecycle
from service.api.asgi import (
    GZIP_LEVEL,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    ComputeLane,
    GZipIfAccepted,
    Metrics,
    RequestMiddleware,
)
from service.api.endpoints import ComputePool, RequestRoute
from service.api.errors import install_error_handlers
from service.api.openapi import with_request_schemas
from service.api.routes import ROUTERS
from service.api.workers import WorkerPool
from service.compute.ops.activations import ACTIVATIONS, evaluate_activation
from service.compute.optimisation.compiled import ChunkCompiler, cxx_available
from service.compute.optimisation.traced import trace_value_and_grad
from service.config import Settings
from service.store import FormulaStore, database_url

logger = logging.getLogger("service")

DESCRIPTION = """Values and derivatives computed by PyTorch autograd, over HTTP.

Tensors travel as JSON numbers, nested arrays (non-finite values as "NaN", "Infinity",
"-Infinity") or base64 objects `{shape, dtype, base64}`. Every error body is
`{"error": {"type", "message", ...}}`."""


def warm_up() -> None:
    """Exercise value, VJP, second derivative, Jacobian and a traced objective once, so that the
    first request does not pay for loading kernels, torch.func and the tracer (about 2.5 s)."""
    for batched in (True, False):
        trace_value_and_grad(lambda x: (x * x).sum(-1), torch.zeros(2, 2), batched)
    for name in ("sigmoid", "softmax"):
        spec = ACTIVATIONS.get(name)
        evaluate_activation(
            spec,
            torch.linspace(-1.0, 1.0, 4),
            spec.defaults(),
            second_order=spec.elementwise,
            want_jacobian=True,
            max_jacobian_elements=16,
        )


class GradientService(FastAPI):
    """The FastAPI application with what routes read on every request as typed attributes
    (``app.state`` answers only after a failed attribute lookup): the settings, the metrics, the
    compute pool, the step compiler (set up when the lifespan starts) and readiness."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        super().__init__(**options)
        self.settings = settings
        self.metrics = Metrics()
        self.compute_pool: ComputePool | WorkerPool = self.new_pool()
        """Replaced by a fresh one each time the lifespan starts."""
        self.chunk_compiler: ChunkCompiler | None = None
        """Compiles long Adam runs' steps (see ``compiled``); None without a C++ compiler or when off."""
        self.readiness: Literal["starting", "ready"] = "starting"
        self.formulas = FormulaStore(
            database_url(settings.database_url, settings.data_dir), max_formulas=settings.max_formulas
        )
        """Saved formulas: the database is opened on first use (never by the small-request path)."""

    def new_pool(self) -> ComputePool:
        settings = self.settings
        return ComputePool(
            settings.effective_max_concurrency(),
            settings.max_queue,
            settings.retry_after_s,
            on_overload=self.metrics.rejections.labels("overloaded").inc,
        )


def create_app(settings: Settings | None = None) -> GradientService:
    """Build the application from ``settings`` (read from GRADIENT_* variables when omitted)."""
    settings = settings or Settings()
    app = GradientService(
        settings,
        title="Gradient Service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan,
        # Off unless asked for: even with no OpenTelemetry provider configured, FastAPI looks
        # for one (in the environment) on every request.
        telemetry=None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    _add_routes(app)
    install_error_handlers(app)
    _document(app)
    _add_middleware(app)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start up: the compute pool (worker processes, or threads), torch threads, metrics of the
    pool, the compiler, a warm-up; then ready. Shut down: the compiler and the workers."""
    assert isinstance(app, GradientService)
    settings, metrics = app.settings, app.metrics
    processes = settings.effective_compute_processes()
    pool = WorkerPool(settings, metrics, processes) if processes else app.new_pool()
    app.compute_pool = pool
    torch.set_num_threads(settings.effective_torch_threads())
    metrics.computing.set_function(lambda: pool.running)
    metrics.queued.set_function(lambda: pool.waiting)
    if settings.compile and not processes:  # with workers, long runs (and their compiles) happen there
        if cxx_available():
            app.chunk_compiler = ChunkCompiler(settings.compile_min_steps, metrics.observe_compilation)
        else:
            logger.info("no C++ compiler found: optimisation steps will not be compiled")
    try:
        async with anyio.create_task_group() as starting:  # the workers start while this process warms up
            if isinstance(pool, WorkerPool):
                starting.start_soon(pool.start)
            await anyio.to_thread.run_sync(warm_up)
        # Everything loaded so far (torch, torch.func and their modules) lives as long as the
        # process: keep it out of the collector's generations, so full collections stay short.
        gc.collect()
        gc.freeze()
        if processes and settings.front_nice:
            lifecycle.lower_priority(settings.front_nice)
        lifecycle.install_drain_handler(settings.drain_s)
        app.readiness = "ready"
        yield
    finally:
        if app.chunk_compiler is not None:
            app.chunk_compiler.shutdown()
        if isinstance(pool, WorkerPool):
            await pool.stop()
        await anyio.to_thread.run_sync(app.formulas.close)


def _add_routes(app: GradientService) -> None:
    """The routes carry their full paths and tags already. Adding them directly, rather than
    through include_router's nested routers, saves every request a router-by-router match;
    putting them ahead of the documentation routes saves it four more."""
    app.router.routes[:0] = [route for router in ROUTERS for route in router.routes]


def _document(app: GradientService) -> None:
    """The OpenAPI, with the request models the compute routes read themselves."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_request_schemas(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_middleware(app: GradientService) -> None:
    """Innermost first: the last one added sees the request first."""
    settings = app.settings
    if not settings.opentelemetry:  # FastAPI's spans are named by its router, which the lane skips
        compute_routes = [route for route in app.router.routes if isinstance(route, RequestRoute)]
        app.add_middleware(ComputeLane, routes=compute_routes, handlers=app.exception_handlers)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(GZipIfAccepted, minimum_size=settings.gzip_min_bytes, compresslevel=GZIP_LEVEL)
    if settings.api_key_list():
        app.add_middleware(ApiKeyMiddleware, keys=settings.api_key_list())
    if settings.cors_origin_list():  # outside the keys: a preflight carries none
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list(),
            allow_methods=["GET", "POST", "PUT", "DELETE"],  # PUT and DELETE: saved formulas
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "Accept", "If-Match", "If-None-Match"],
            expose_headers=["X-Request-ID", "Retry-After", "ETag", "Location"],
        )
    app.add_middleware(RequestMiddleware, metrics=app.metrics, access_log=settings.access_log)


def __getattr__(name: str) -> Any:
    """``service.main:app`` is built on first access, so importing this module reads no settings."""
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
