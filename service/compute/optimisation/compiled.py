"""Adam steps compiled with TorchInductor, ``CHUNK`` steps per call, for long runs on a CPU that
the step machine (see ``machine``) does not take: many starts, or graphs its tape cannot express.

A traced objective (see ``traced``) and Adam's update, unrolled ``CHUNK`` times, are traced
again into one graph, exported, and compiled ahead of time by AOTInductor into a package (a
shared library with its weights): a step then costs a few microseconds instead of dozens of
torch calls. Compiling takes tens of seconds of CPU, so it runs in a child process in Linux's
idle scheduling class (at niceness 19 elsewhere), started when the run that asked for it has
finished; the requests of the process that asked go on with the eager steps meanwhile (the
child holds neither their interpreter lock nor their CPU), and use the kernel once it is loaded.
Packages are kept on disk by case (objective graph, shape, dtype, Adam variant), so a case
compiled once loads in a fraction of a second after a restart. Hyper-parameters are inputs of
the kernel, so one compile serves every learning rate.

The kernel's arithmetic is Adam's, as torch's fused kernel computes it, up to rounding order:
in float64 its runs stay within 1e-7 of torch.optim's (tested). Where no C++ compiler is found
(``cxx_available``; the container has none) the app makes no ChunkCompiler and every step is
eager; a compile that fails is logged, and the eager steps go on.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from service import lifecycle
from service.compute.optimisation.machine import cache_folder
from service.compute.optimisation.optimizers import FusedAdam
from service.compute.optimisation.traced import TRACING, TracedValueAndGrad, finite_probe

logger = logging.getLogger(__name__)

CHUNK = 16
"""Steps per kernel call."""

_MOST_PENDING = 2
"""Compiles queued or under way at once; cases asked for beyond that are asked for again later."""

CompileReport = Callable[[str, float], None]
"""Told ``("compiled" | "failed", seconds)`` after each compile."""


@dataclass(frozen=True)
class _Key:
    graph: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    decoupled: bool
    amsgrad: bool


def _key(traced: TracedValueAndGrad, rows: torch.Tensor, update: FusedAdam) -> _Key:
    """What the kernel depends on: the graph's code and constants, the shape, and the variant."""
    digest = hashlib.sha256(traced.graph_module.code.encode())
    for name, value in sorted(traced.graph_module.named_buffers()):  # every constant is a buffer
        digest.update(name.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    return _Key(
        digest.hexdigest(),
        tuple(rows.shape),
        rows.dtype,
        rows.device,
        update.kernel is torch._fused_adamw_,
        bool(update.options["amsgrad"]),
    )


class CompiledChunk:
    """``CHUNK`` Adam steps as one compiled kernel."""

    def __init__(self, kernel: Callable[..., Any]) -> None:
        self.kernel = kernel

    def run(
        self, calls: int, rows: torch.Tensor, update: FusedAdam, tolerance: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``calls`` x ``CHUNK`` steps of ``rows`` and ``update``'s state, in place. Returns the
        sum of ``finite_probe`` over the steps (NaN once a value or gradient is not finite), and
        whether a gradient norm reached ``tolerance``."""
        state = update.state()
        inputs, hyper = [rows, *state], _hyper(update, rows)
        health = torch.zeros((), dtype=rows.dtype, device=rows.device)
        lowest = torch.full((), torch.inf, dtype=rows.dtype, device=rows.device)
        for _ in range(calls):
            outputs = self.kernel(*inputs, *hyper)
            inputs = list(outputs[: len(inputs)])
            health += outputs[-2]
            torch.minimum(lowest, outputs[-1], out=lowest)
        for tensor, value in zip([rows, *state], inputs, strict=True):
            tensor.copy_(value)
        near = lowest <= tolerance if tolerance is not None else torch.zeros((), dtype=torch.bool)
        return health, near


def _hyper(update: FusedAdam, rows: torch.Tensor) -> list[torch.Tensor]:
    options = update.options
    return [
        torch.tensor(options[name], dtype=rows.dtype, device=rows.device)
        for name in ("lr", "beta1", "beta2", "eps", "weight_decay")
    ]


def _unrolled(traced: TracedValueAndGrad, decoupled: bool, amsgrad: bool) -> Callable[..., tuple[torch.Tensor, ...]]:
    """``CHUNK`` steps of Adam (AdamW if ``decoupled``) as torch's fused kernel computes them."""
    graph = traced.graph_module

    def steps(x: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        exp_avg, exp_avg_sq = tensors[0], tensors[1]
        max_exp_avg_sq = tensors[2] if amsgrad else None
        step, lr, beta1, beta2, eps, weight_decay = tensors[3 if amsgrad else 2 :]
        health = torch.zeros((), dtype=x.dtype, device=x.device)
        lowest = torch.full((), torch.inf, dtype=x.dtype, device=x.device)
        for _ in range(CHUNK):
            values, grad = graph(x)
            health = health + finite_probe(values, grad)
            lowest = torch.minimum(lowest, torch.linalg.vector_norm(grad, dim=-1).min())
            step = step + 1
            if decoupled:
                x = x * (1 - lr * weight_decay)
            else:
                grad = grad + weight_decay * x
            exp_avg = exp_avg.lerp(grad, 1 - beta1)
            exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
            second = exp_avg_sq
            if max_exp_avg_sq is not None:
                max_exp_avg_sq = torch.maximum(max_exp_avg_sq, exp_avg_sq)
                second = max_exp_avg_sq
            corrected = step.to(x.dtype)
            step_size = lr / (1 - beta1**corrected)
            denom = second.sqrt() / (1 - beta2**corrected).sqrt() + eps
            x = x - step_size * exp_avg / denom
        state = [exp_avg, exp_avg_sq, *([max_exp_avg_sq] if max_exp_avg_sq is not None else []), step]
        return (x, *state, health, lowest)

    return steps


def cxx_available() -> bool:
    """Whether TorchInductor can find a C++ compiler here ($CXX, else g++, c++ or clang++)."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return any(shutil.which(name) for name in names)


def _inputs(shape: tuple[int, ...], dtype: torch.dtype, amsgrad: bool) -> list[torch.Tensor]:
    """Example inputs of the kernel: the rows, Adam's state (step count last) and the hyper-parameters."""
    rows = torch.zeros(shape, dtype=dtype)
    state = [torch.zeros_like(rows) for _ in range(3 if amsgrad else 2)] + [torch.zeros((), dtype=torch.float32)]
    return [rows, *state, *(torch.zeros((), dtype=dtype) for _ in range(5))]


def package_path(key: _Key) -> Path:
    """Where the package of a case is kept (the same case compiles once per machine)."""
    digest = hashlib.sha256(repr((key.graph, key.shape, key.dtype, key.decoupled, key.amsgrad)).encode())
    return cache_folder() / "chunks" / f"{digest.hexdigest()[:32]}-torch{torch.__version__}.pt2"


def build_package(graph_module: torch.fx.GraphModule, key: _Key, path: Path) -> Path:
    """Trace ``CHUNK`` steps of the case, export them and compile the package at ``path`` (tens
    of seconds; run in a child process by ``ChunkCompiler``, which moves the package in place)."""
    import torch._inductor.config  # heavy: loaded by the compiling process only

    torch._inductor.config.compile_threads = 1
    inputs = _inputs(key.shape, key.dtype, key.amsgrad)
    function = _unrolled(TracedValueAndGrad(graph_module), key.decoupled, key.amsgrad)
    with TRACING, torch.no_grad():
        graph = make_fx(function, tracing_mode="fake", _allow_non_fake_inputs=True)(*inputs)
        exported = torch.export.export(graph, tuple(inputs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own, about its tree specs
        torch._inductor.aoti_compile_and_package(exported, package_path=str(path))
    return path


def load_chunk(path: Path) -> CompiledChunk:
    """A compiled package, ready to run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        kernel = torch._inductor.aoti_load_package(str(path))
    return CompiledChunk(kernel)


def _picklable(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of the graph without its type annotations (names that a pickled graph cannot import)."""
    graph = copy.deepcopy(graph_module.graph)
    for node in graph.nodes:
        node.type = None
    return torch.fx.GraphModule(graph_module, graph)


def _build_in_child(graph_module: torch.fx.GraphModule, key: _Key, path: Path, started: Callable[[Any], None]) -> None:
    """``build_package`` in a new interpreter at the lowest priority (``main`` below): the job
    crosses as a file this process writes into its own cache folder. ``started`` is told the
    child's ``Popen`` (to end it at shutdown)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        job = Path(scratch) / "job.pickle"
        job.write_bytes(pickle.dumps((_picklable(graph_module), key, Path(scratch) / "package.pt2")))
        command = [sys.executable, "-c", "from service.compute.optimisation.compiled import main; main()", str(job)]
        with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as child:
            started(child)
            try:
                _, errors = child.communicate(timeout=_CHILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()
                raise
        if child.returncode != 0:
            raise RuntimeError(f"the compiling process exited with {child.returncode}: {errors.decode()[-2000:]}")
        os.replace(Path(scratch) / "package.pt2", path)  # whole or not at all: a partial one is never loaded


_CHILD_TIMEOUT_S = 900


def main() -> None:
    """The compiling child: the lowest priority, one thread, an end with its parent; then the job."""
    os.nice(19)
    if sys.platform == "linux":  # idle scheduling (its C++ compiler inherits it): CPU nothing else wants
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    lifecycle.die_with_parent()
    torch.set_num_threads(1)
    # Unpickling a graph re-traces it, which needs this module of torch's loaded (as the
    # compiler loads it, but only later).
    importlib.import_module("torch._higher_order_ops.triton_kernel_wrap")
    graph_module, key, path = pickle.loads(Path(sys.argv[1]).read_bytes())
    build_package(graph_module, key, path)


class ChunkCompiler:
    """Compiled chunks by objective graph, shape and variant, compiled one at a time in a
    background thread; the ``capacity`` most recently used are kept."""

    def __init__(self, min_steps: int, on_outcome: CompileReport | None = None, capacity: int = 32) -> None:
        self.min_steps, self.on_outcome, self.capacity = min_steps, on_outcome, capacity
        self._chunks: OrderedDict[_Key, Future[CompiledChunk]] = OrderedDict()
        self._wanted: dict[_Key, tuple[TracedValueAndGrad, torch.Tensor, FusedAdam]] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compile")
        self._child: subprocess.Popen[bytes] | None = None
        """The compiling process under way, if any."""
        self._stopping = False

    def chunk(
        self, traced: TracedValueAndGrad, rows: torch.Tensor, update: FusedAdam, planned_steps: int
    ) -> CompiledChunk | None:
        """The compiled chunk for this case if it is ready; else None, and when the run plans at
        least ``min_steps`` steps, a compile is wanted (``start_wanted`` starts it)."""
        if rows.device.type != "cpu":  # on a GPU, CUDA graphs already take the launches away
            return None
        key = _key(traced, rows, update)
        with self._lock:
            future = self._chunks.get(key)
            if future is None:
                if planned_steps >= self.min_steps:
                    self._wanted.setdefault(key, (traced, rows.detach().clone(), update))
                return None
            self._chunks.move_to_end(key)
        if not future.done() or future.exception() is not None:
            return None
        return future.result()

    def start_wanted(self) -> None:
        """Start compiling, in the background, the cases asked for since the last call."""
        with self._lock:
            for key, (traced, rows, update) in self._wanted.items():
                pending = sum(not future.done() for future in self._chunks.values())
                if key not in self._chunks and pending < _MOST_PENDING:
                    self._chunks[key] = self._executor.submit(self._compile, traced, rows, update)
            self._wanted.clear()
            while len(self._chunks) > self.capacity:
                _, evicted = self._chunks.popitem(last=False)
                evicted.cancel()

    def _compile(self, traced: TracedValueAndGrad, rows: torch.Tensor, update: FusedAdam) -> CompiledChunk:
        started = time.monotonic()
        try:
            key = _key(traced, rows, update)
            path = package_path(key)
            if not path.exists():
                _build_in_child(traced.graph_module, key, path, self._started)
            chunk = load_chunk(path)
        except Exception:
            if self._stopping:
                raise  # the compiling process was ended by shutdown: nothing failed
            logger.warning("compiling optimiser steps failed; eager steps go on", exc_info=True)
            self._tell("failed", time.monotonic() - started)
            raise
        self._tell("compiled", time.monotonic() - started)
        return chunk

    def _started(self, child: subprocess.Popen[bytes]) -> None:
        self._child = child

    def _tell(self, outcome: str, seconds: float) -> None:
        if self.on_outcome is not None:
            self.on_outcome(outcome, seconds)

    def shutdown(self) -> None:
        """Drop the compiles not started yet, and end the compiling process."""
        self._stopping = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._child is not None and self._child.poll() is None:
            self._child.kill()  # a compile under way is abandoned: its partial file is never loaded

    def compiled(self) -> int:
        """How many cases have a kernel ready."""
        with self._lock:
            futures = list(self._chunks.values())
        return sum(future.done() and future.exception() is None for future in futures)

    def wait(self) -> None:
        """Block until every compile started so far has finished (for tests and benchmarks)."""
        with self._lock:
            futures = list(self._chunks.values())
        for future in futures:
            future.exception()
