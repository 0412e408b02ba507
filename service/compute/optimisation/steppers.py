"""Steppers: how one group of runs is evaluated and stepped. ``TracedStepper`` runs every start
at once on the traced graph with the optimizer's update (the fused kernel where there is one,
compiled chunks and CUDA graphs for long runs); ``AutogradStepper`` runs plain autograd and a
torch.optim optimizer, with a closure for lbfgs."""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Literal, Protocol

import torch

from service.compute.optimisation import machine
from service.compute.optimisation.compiled import CHUNK, ChunkCompiler, CompiledChunk
from service.compute.optimisation.optimizers import FusedAdam, OptimizerSpec, Update
from service.compute.optimisation.runs import Objective, Schedule
from service.compute.optimisation.traced import TracedValueAndGrad, finite_probe, trace_value_and_grad
from service.errors import InvalidInput, LimitExceeded

logger = logging.getLogger(__name__)


class OutOfTime(Exception):
    """Raised inside an lbfgs step whose deadline passed, to abandon the step."""


_TRACED: OrderedDict[Hashable, TracedValueAndGrad | Literal[False]] = OrderedDict()
_TRACED_LOCK = threading.Lock()
TRACED_KEPT = 256
"""Traced graphs kept across requests (the most recently used)."""


def trace_objective(objective: Objective, starts: torch.Tensor) -> TracedValueAndGrad | Literal[False]:
    """The objective's traced value and gradient over rows of ``starts``, or False where it
    cannot be traced (plain autograd then evaluates it). Errors in the objective propagate.
    An objective with a key is traced once per shape, dtype and device, and kept."""
    key = None
    if objective.key is not None:
        key = (objective.key, tuple(starts.shape), starts.dtype, starts.device, objective.batched)
        with _TRACED_LOCK:
            if key in _TRACED:
                _TRACED.move_to_end(key)
                return _TRACED[key]
    try:
        traced: TracedValueAndGrad | Literal[False] = trace_value_and_grad(objective.fn, starts, objective.batched)
    except (InvalidInput, LimitExceeded):
        raise
    except Exception:  # anything tracing cannot follow: autograd still can
        logger.debug("objective not traceable; using autograd", exc_info=True)
        traced = False
    if key is not None:
        with _TRACED_LOCK:
            _TRACED[key] = traced
            while len(_TRACED) > TRACED_KEPT:
                _TRACED.popitem(last=False)
    return traced


class Stepper(Protocol):
    """One group of runs' parameters, how to evaluate them and how to step them."""

    rows: torch.Tensor
    """The parameters as [runs, D] (each run's point flattened), updated in place by ``advance``."""
    abandons_steps: bool
    """``advance`` may raise OutOfTime partway, leaving ``rows`` to be restored."""

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Values [runs] and gradients [runs, D] at ``rows``."""

    def advance(self) -> None:
        """One optimizer step from the last evaluation; may raise OutOfTime."""

    def skip(self, count: int, active: torch.Tensor, tolerance: float | None) -> bool:
        """Take ``count`` steps without looking at each: True if none of them would have stopped
        an active run; else False, with the parameters and the optimizer state put back."""


class TracedStepper:
    """Every start at once: gradients from the traced graph, and the optimizer's update handed
    them (the fused kernel where there is one)."""

    abandons_steps = False

    def __init__(
        self,
        traced: TracedValueAndGrad,
        starts: torch.Tensor,
        spec: OptimizerSpec,
        hyper: Mapping[str, Any],
        compiler: ChunkCompiler | None = None,
        planned_steps: int = 0,
    ) -> None:
        self.traced = traced
        self.rows = starts.detach().clone()
        self.update = spec.update(self.rows, hyper)
        self.compiler, self.planned_steps = compiler, planned_steps
        self.chunk: CompiledChunk | None = None
        self.grads = torch.zeros_like(self.rows)
        self.captured: dict[int, _Captured] | None = {}
        """CUDA graphs of ``_steps`` by step count; None once capture has failed."""

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        values, self.grads = self.traced(self.rows.detach())
        return values, self.grads

    def advance(self) -> None:
        self.update(self.grads)

    def skip(self, count: int, active: torch.Tensor, tolerance: float | None) -> bool:
        """Take ``count`` steps without looking at each: True if none of them would have stopped
        an active run; else False, with the parameters and the optimizer state put back."""
        rows, update = self.rows.detach(), self.update
        saved_rows, saved_state = rows.clone(), update.save()
        if bool(active.all()):
            health, near = self._replay(count, tolerance)
        else:
            health, near = self._steps(count, active, tolerance, saved_rows)
        if math.isfinite(float(health)) and not bool(near):
            return True
        rows.copy_(saved_rows)
        update.load(saved_state)
        return False

    def _steps(
        self, count: int, active: torch.Tensor | None, tolerance: float | None, frozen: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` steps of the runs in ``active`` (None: all), the others held at ``frozen``;
        returns the sum of ``finite_probe`` over the steps (NaN once a value or gradient is not
        finite), and whether a gradient norm reached ``tolerance``. No host synchronisation: a
        GPU runs ahead."""
        rows, update, traced = self.rows.detach(), self.update, self.traced
        if active is None and count % CHUNK == 0 and isinstance(update, FusedAdam):
            chunk = self.chunk or self._compiled()
            if chunk is not None:
                return chunk.run(count // CHUNK, rows, update, tolerance)
        watched = None if active is None else torch.nonzero(active).flatten()
        health = torch.zeros((), dtype=rows.dtype, device=rows.device)
        near = torch.zeros((), dtype=torch.bool, device=rows.device)
        for _ in range(count):
            values, grads = traced(rows)
            seen_values, seen_grads = (values, grads) if watched is None else (values[watched], grads[watched])
            health += finite_probe(seen_values, seen_grads)
            if tolerance is not None:
                near |= (torch.linalg.vector_norm(seen_grads, dim=-1) <= tolerance).any()
            update(grads)
            if active is not None and frozen is not None:
                torch.where(active.unsqueeze(-1), rows, frozen, out=rows)
        return health, near

    def _compiled(self) -> CompiledChunk | None:
        if self.compiler is None or not isinstance(self.update, FusedAdam):  # narrows for mypy
            return None
        self.chunk = self.compiler.chunk(self.traced, self.rows.detach(), self.update, self.planned_steps)
        if self.chunk is None and self.compiler.min_steps > self.planned_steps:
            self.compiler = None  # too short a run to compile for: stop asking
        return self.chunk

    def _replay(self, count: int, tolerance: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``_steps`` for every run; on a GPU, from the second time for a given ``count``, as a
        CUDA graph captured the first time: one launch instead of thousands."""
        if not self.rows.is_cuda or not self.update.capturable or self.captured is None:
            return self._steps(count, None, tolerance, None)
        captured = self.captured.get(count)
        if captured is None:
            self.captured[count] = _Captured(lambda: self._steps(count, None, tolerance, None))
            return self._steps(count, None, tolerance, None)  # also warms up what the graph will hold
        if captured.graph is None:
            try:
                captured.capture()
            except RuntimeError:
                logger.warning("CUDA graph capture failed; stepping without it", exc_info=True)
                self.captured = None
                return self._steps(count, None, tolerance, None)
        return captured.replay()


class _Captured:
    """Steps recorded as a CUDA graph: replaying it reruns the same kernels on the same memory."""

    def __init__(self, body: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.body = body
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None

    def capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        # thread_local: other requests' threads may use the GPU meanwhile.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            outputs = self.body()
        self.graph, self.outputs = graph, outputs

    def replay(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.graph is not None and self.outputs is not None
        self.graph.replay()
        return self.outputs


class MachineStepper:
    """Every start at once, the traced graph evaluated by the step machine (see ``machine``) in
    one C call, and the optimizer's update handed the gradients: for small groups of runs whose
    graph the machine's tape can express."""

    abandons_steps = False

    def __init__(self, engine: machine.Machine, update: Update) -> None:
        self.machine, self.update = engine, update
        self.rows = engine.rows

    @classmethod
    def of(
        cls, traced: TracedValueAndGrad, starts: torch.Tensor, spec: OptimizerSpec, hyper: Mapping[str, Any]
    ) -> MachineStepper | None:
        """The machine's stepper for these runs, or None where the machine cannot run them."""
        if starts.numel() > machine.MAX_ROWS_ELEMENTS or starts.device.type != "cpu" or starts.dim() != 2:
            return None
        lib = machine.library()
        program = traced.machine_program(starts) if lib is not None else None
        if lib is None or program is None:
            return None
        rows = starts.detach().clone().contiguous()
        return cls(machine.Machine(lib, program, rows), spec.update(rows, hyper))

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.machine.evaluate()
        return self.machine.values, self.machine.grads

    def advance(self) -> None:
        self.update(self.machine.grads)

    def skip(self, count: int, active: torch.Tensor, tolerance: float | None) -> bool:
        """Take ``count`` steps without looking at each: True if none of them would have stopped
        an active run; else False, with the parameters and the optimizer state put back."""
        rows, update, engine = self.rows, self.update, self.machine
        saved_rows, saved_state = rows.clone(), update.save()
        partial = not bool(active.all())
        watched = active.to(torch.uint8) if partial else None
        engine.watch(watched, tolerance)
        evaluate, grads, seen = engine.evaluate, engine.grads, 0
        try:
            for _ in range(count):
                seen |= evaluate()
                update(grads)
                if partial:
                    torch.where(active.unsqueeze(-1), rows, saved_rows, out=rows)
        finally:
            engine.watch(None, None)
        if not seen:
            return True
        rows.copy_(saved_rows)
        update.load(saved_state)
        return False


class AutogradStepper:
    """Plain autograd and a torch.optim optimizer: a batched group for a batched objective,
    else one start; a closure for optimizers that evaluate several times per step (lbfgs)."""

    def __init__(
        self,
        objective: Objective,
        starts: torch.Tensor,
        spec: OptimizerSpec,
        hyper: Mapping[str, Any],
        schedule: Schedule,
    ) -> None:
        self.batched = objective.batched and spec.elementwise
        self.x = (starts if self.batched else starts[0]).detach().clone().requires_grad_(True)
        self.rows = self.x if self.batched else self.x.unsqueeze(0)
        self.objective, self.spec, self.schedule = objective, spec, schedule
        self.abandons_steps = not spec.elementwise
        self.optimizer = spec.build(self.x, hyper)

    def _values(self) -> torch.Tensor:
        values = self.objective.fn(self.x)
        return values if self.batched else values.reshape(1)

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x
        self.optimizer.zero_grad()
        with torch.enable_grad():
            values = self._values()
            if values.requires_grad:
                values.sum().backward()  # type: ignore[no-untyped-call]
        if x.grad is None:  # the objective does not depend on x: its gradient is zero
            x.grad = torch.zeros_like(x)
        return values.detach(), x.grad if self.batched else x.grad.unsqueeze(0)

    def closure(self) -> torch.Tensor:
        if self.schedule.out_of_time():  # one lbfgs step can run max_iter evaluations: look at each
            raise OutOfTime
        self.optimizer.zero_grad()
        with torch.enable_grad():
            total = self._values().sum()
            total.backward()  # type: ignore[no-untyped-call]
        return total

    def skip(self, count: int, active: torch.Tensor, tolerance: float | None) -> bool:
        """Never: each step is looked at (plain autograd gains nothing from batching steps)."""
        return False

    def advance(self) -> None:
        if self.spec.elementwise:
            self.optimizer.step()
        else:
            self.optimizer.step(self.closure)  # type: ignore[arg-type]  # LBFGS's closure returns the loss
