"""What a computation costs, measured without running it, and a deadline that holds while it runs.

Both watch every operation torch performs, through a dispatch mode: forward ops, backward passes
and the batched loops inside Jacobians and Hessians (vmap) alike.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from service.errors import DeadlineExceeded, LimitExceeded, check_limit

T = TypeVar("T")
META = torch.device("meta")


@dataclass(frozen=True)
class Cost:
    """An estimate of one computation: ``flops`` (matrix products by their multiply-adds, every
    other op by the elements it reads and writes: elementwise work is bound by memory traffic),
    ``bytes`` (the peak of the tensors alive at once, inputs included) and ``largest`` (elements
    of the largest tensor it makes)."""

    flops: int
    bytes: int
    largest: int

    def public(self) -> dict[str, int]:
        return {"flops": self.flops, "bytes": self.bytes}


class CostMeter(TorchDispatchMode):
    """Counts what torch does under it. Run on the meta device it costs no arithmetic at all,
    only shapes: an estimate of a computation in milliseconds, whatever its size."""

    def __init__(self, inputs: tuple[torch.Tensor, ...] = ()) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.flops = 0
        self.largest = 0
        self.live = sum(_nbytes(tensor) for tensor in inputs)
        self.peak = self.live
        self._watched: list[weakref.ref[torch.Tensor]] = []  # kept, so that their callbacks run

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        returns = func._schema.returns
        if any(r.alias_info is not None and not r.alias_info.is_write for r in returns):
            return out  # a view: no work, no memory
        outputs = _tensors(out)
        if not outputs:
            return out  # a question about metadata (sizes, storage): no work
        matmul = flop_registry.get(func._overloadpacket)
        if matmul is not None:
            self.flops += int(matmul(*args, **kwargs, out_val=out))
        else:
            touched = (*_tensors(args), *_tensors(tuple(kwargs.values())), *outputs)
            self.flops += sum(tensor.numel() for tensor in touched)
        if any(r.alias_info is not None for r in returns):
            return out  # in place: work, but no new memory
        for tensor in outputs:
            self.largest = max(self.largest, tensor.numel())
            size = _nbytes(tensor)
            self.live += size
            self._watched.append(weakref.ref(tensor, self._free_callback(size)))
        self.peak = max(self.peak, self.live)
        return out

    def _free_callback(self, size: int) -> Callable[[Any], None]:
        def free(ref: Any) -> None:
            self.live -= size

        return free

    def cost(self) -> Cost:
        return Cost(self.flops, self.peak, self.largest)


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in an op's arguments or results: a tensor, or a flat sequence holding some
    (or a sequence of them, as cat's)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        found: list[torch.Tensor] = []
        for item in value:
            if isinstance(item, torch.Tensor):
                found.append(item)
            elif isinstance(item, tuple | list):
                found.extend(element for element in item if isinstance(element, torch.Tensor))
        return found
    return []


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def estimate(job: Callable[[], T], inputs: tuple[torch.Tensor, ...] = ()) -> tuple[T, Cost]:
    """``job()`` (meant to run on meta tensors) and what it cost."""
    with CostMeter(inputs) as meter:
        result = job()
    return result, meter.cost()


def check_cost(cost: Cost, *, max_flops: int, max_elements: int) -> None:
    """Refuse a computation over the compute limit, or making a tensor over the size limit (413)."""
    check_limit(cost.largest, max_elements, "elements in one intermediate tensor", "intermediate_too_large")
    if cost.flops > max_flops:
        raise LimitExceeded(
            f"This request would take an estimated {cost.flops} floating-point operations, over the limit of "
            f"{max_flops}; send fewer points or smaller tensors, or ask for fewer derivatives.",
            error_type="compute_too_large",
            estimate=cost.flops,
            limit=max_flops,
        )


class Deadline(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Raises DeadlineExceeded before the first torch operation that would start after ``at``
    (a ``time.monotonic()`` instant), so that a computation ends soon after its time budget
    and frees its compute slot."""

    def __init__(self, at: float, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.at = at
        self.budget_s = budget_s
        self.clock = clock

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        if self.clock() > self.at:
            raise DeadlineExceeded(
                f"The request's time budget of {self.budget_s:g} s ran out while computing; "
                "send less, or ask a dry run for the cost first."
            )
        return func(*args, **(kwargs or {}))
