"""Settings: one pydantic-settings model read from GRADIENT_* variables (and CLI options)."""

from __future__ import annotations

import functools
import os
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DevicePreference = str  # "auto", "cpu", "cuda" or "cuda:N"; checked below


@functools.cache
def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class Settings(BaseSettings):
    """Every knob of the service. Nothing here touches the GPU or the disk at import time."""

    model_config = SettingsConfigDict(env_prefix="GRADIENT_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address the server binds to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    workers: int = Field(1, ge=1, le=64, description="Worker processes.")
    device: DevicePreference = Field("auto", description="What `device: auto` means: auto, cpu, cuda or cuda:N.")
    torch_threads: int = Field(0, ge=0, le=256, description="Intra-op threads per worker; 0 = cores / workers.")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Request body cap in bytes (413 above it).")
    max_elements: int = Field(10_000_000, ge=1, description="Cap on the elements of all tensors in one request.")
    max_jacobian_elements: int = Field(4_000_000, ge=1, description="Cap on the entries of one Jacobian or Hessian.")
    max_flops: int = Field(
        10_000_000_000,
        ge=1,
        description="Cap on the estimated work of one derivative request, in floating-point operations (413).",
    )
    expression_max_length: int = Field(10_000, ge=1, description="Longest expression, in characters (413).")
    expression_max_nodes: int = Field(2_000, ge=1, description="Most syntax nodes in one expression (413).")
    expression_max_depth: int = Field(64, ge=1, le=400, description="Deepest nesting in one expression (413).")
    max_steps: int = Field(10_000_000, ge=1, description="Cap on optimisation steps x runs (413).")
    max_trajectory_points: int = Field(100_000, ge=1, description="Trajectory points in one response (413).")
    max_grid_points: int = Field(1_000_000, ge=1, description="Grid points of one landscape (413).")
    data_dir: str = Field(
        "data",
        description="Directory of the service's own files: the SQLite database of saved formulas when "
        "database_url is empty (relative paths from the working directory).",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the saved formulas' database (postgresql://user:pass@host/db for several "
        "replicas); empty = SQLite at {data_dir}/gradient.db.",
    )
    max_formulas: int = Field(10_000, ge=1, description="Most saved formulas (413 for one more).")
    formula_max_inputs: int = Field(64, ge=1, le=1024, description="Most declared inputs of one saved formula (413).")
    formula_description_max_length: int = Field(
        2_000, ge=0, description="Longest description of a saved formula, in characters (413)."
    )
    compile: bool = Field(
        True,
        description="Compile long Adam runs that the step machine does not take, on a CPU, with AOTInductor in a "
        "low-priority child process (needs a C++ compiler).",
    )
    step_machine: bool = Field(
        True,
        description="Evaluate the objectives of small optimisation runs in one C call per step (the step machine; "
        "built with the C compiler on first use, or ahead of time); off: one torch call per operation.",
    )
    compile_min_steps: int = Field(
        10_000, ge=1, description="Steps a run plans before its case is compiled (a compile takes 20-30 s of idle CPU)."
    )
    request_timeout_s: float = Field(60.0, gt=0, description="Time budget of one request, waiting included (504).")
    max_concurrency: int = Field(
        0,
        ge=0,
        description="Computations at once when compute_processes is 0; 0 = one (torch ops already use every thread).",
    )
    compute_processes: int | Literal["auto"] = Field(
        "auto",
        description="Compute worker processes per server process (one computation each at a time); auto = one "
        "per GPU, else one per 4 cores; 0 = compute in the server process's own threads.",
    )
    deadline_grace_s: float = Field(
        5.0,
        ge=0,
        description="A computation still running this long past its time budget has its worker process ended (504).",
    )
    front_nice: int = Field(
        5,
        ge=0,
        le=19,
        description="Niceness the server process adds to itself once its compute workers run, so that under "
        "overload computing comes before refusing (Linux: its event loop's thread).",
    )
    worker_max_computations: int = Field(
        10_000, ge=0, description="A worker process is replaced after this many computations; 0 = never."
    )
    worker_max_rss_mb: int = Field(
        4096,
        ge=0,
        description="A worker process is replaced once its resident memory passes this many MiB; 0 = never.",
    )
    max_queue: int = Field(64, ge=0, description="Computations allowed to wait for a slot; beyond, 503.")
    api_keys: str = Field(
        "", description="Comma-separated API keys; when set, /v1/*, /v2/* and /tesseract/* need a Bearer key."
    )
    cors_origins: str = Field("", description="Comma-separated allowed origins for browsers.")
    opentelemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry traces, metrics and logs, to the globally configured providers.",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field("text", description="Log lines as JSON objects or text.")
    access_log: bool = Field(True, description="One log line per request, with its X-Request-ID.")
    shutdown_grace_s: float = Field(
        20.0, ge=0, description="On SIGTERM, how long requests in flight may take to finish."
    )
    drain_s: float = Field(
        0.0, ge=0, description="On SIGTERM, how long /readyz answers 503 before the listener closes."
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with a 503 when the service is full.")
    gzip_min_bytes: int = Field(4096, ge=0, description="Responses at least this large are gzipped on request.")
    inline_compute_bytes: int = Field(
        16 * 1024,
        ge=0,
        description="Bodies up to this size are computed on the event loop, skipping the thread hop.",
    )

    @field_validator("compute_processes")
    @classmethod
    def _check_processes(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= 256:
            raise ValueError("must be auto or 0 to 256")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in {"auto", "cpu", "cuda"}:
            return value
        if value.startswith("cuda:") and value[5:].isdigit():
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")

    def effective_torch_threads(self) -> int:
        """Threads per computing process, so that all of them together never exceed the cores."""
        if self.torch_threads:
            return self.torch_threads
        return max(1, (os.cpu_count() or 1) // (self.workers * max(1, self.effective_compute_processes())))

    def effective_compute_processes(self) -> int:
        """Compute worker processes per server process (0: none, compute in threads)."""
        if self.compute_processes != "auto":
            return self.compute_processes
        if self.device != "cpu" and self.cuda_devices():
            return self.cuda_devices()
        return max(1, (os.cpu_count() or 1) // (4 * self.workers))

    def cuda_devices(self) -> int:
        """GPUs visible to this process (counted without creating a CUDA context)."""
        return _cuda_devices()

    def effective_max_concurrency(self) -> int:
        """Concurrent computations per server process."""
        return self.effective_compute_processes() or self.max_concurrency or 1

    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    def public_limits(self) -> dict[str, int | float]:
        """The limits a client may want to know, as reported by /v1/info."""
        return {
            "max_body_bytes": self.max_body_bytes,
            "max_elements": self.max_elements,
            "max_jacobian_elements": self.max_jacobian_elements,
            "max_flops": self.max_flops,
            "expression_max_length": self.expression_max_length,
            "expression_max_nodes": self.expression_max_nodes,
            "expression_max_depth": self.expression_max_depth,
            "max_steps": self.max_steps,
            "max_trajectory_points": self.max_trajectory_points,
            "max_grid_points": self.max_grid_points,
            "request_timeout_s": self.request_timeout_s,
            "max_concurrency": self.effective_max_concurrency(),
            "max_queue": self.max_queue,
        }
