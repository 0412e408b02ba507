"""Dry runs and cost estimates against what the computation really does, and the deadline that
stops a computation at its first torch operation past the budget (forward, backward, vmap)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from service.compute.budgets import Cost, Deadline, check_cost
from service.compute.expressions.differentiate import Derivative, Signature, differentiate, dry_run
from service.compute.expressions.language import Limits, compile_program
from service.errors import DeadlineExceeded, LimitExceeded, ServiceError
from tests.compute.test_language import Program, generated_inputs, programs
from tests.helpers import examples

F64 = torch.float64
CPU = torch.device("cpu")
LIMITS = Limits()


def signature(
    source: str,
    inputs: dict[str, torch.Tensor],
    wanted: tuple[Derivative, ...],
    batch: tuple[str, ...] | None = None,
    tangents: dict[str, torch.Tensor] | None = None,
    max_elements: int = 10**8,
) -> Signature:
    return Signature.of(
        source,
        F64,
        inputs,
        None,
        wanted,
        tangents=tangents,
        batch=batch,
        max_entries=10**9,
        max_elements=max_elements,
        limits=LIMITS,
    )


def real(source: str, inputs: dict[str, torch.Tensor], wanted: tuple[Derivative, ...], **options: Any) -> Any:
    program = compile_program(source, frozenset(inputs), F64, CPU, LIMITS, 10**8)
    return differentiate(program, inputs, None, wanted, max_entries=10**9, **options)


def shapes(result: Any) -> dict[str, Any]:
    """Every tensor of a Derivatives as (shape, dtype), by its place in the response."""

    def of(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return tuple(value.shape), value.dtype
        if isinstance(value, dict):
            return {key: of(item) for key, item in value.items()}
        return value

    return {field: of(getattr(result, field)) for field in ("value", "grad", "jacobian", "hessian", "jvp", "hvp")}


WANTED = st.sampled_from(
    [("grad",), ("jacobian",), ("grad", "jvp"), ("hvp",), ("hessian", "hvp"), ("grad", "jacobian", "hessian", "jvp")]
)


@settings(max_examples=examples(40))
@given(programs(scalar=True), st.integers(0, 2**32 - 1), WANTED, st.booleans())
def test_a_dry_run_has_the_shapes_and_dtypes_of_the_real_results(
    program: Program, seed: int, wanted: tuple[Derivative, ...], batched: bool
) -> None:
    note(program.source)
    inputs = generated_inputs(seed)
    batch = None
    if batched:
        inputs = {name: torch.stack([value, value * 0.5]) for name, value in inputs.items()}
        batch = tuple(inputs)
    tangents = (
        {name: torch.ones_like(value) for name, value in inputs.items()} if {"jvp", "hvp"} & set(wanted) else None
    )
    try:
        expected = real(program.source, inputs, wanted, batch=batch, tangents=tangents)
    except ServiceError:  # hardsigmoid's Hessian, say: the dry run need not refuse it
        assume(False)
        return
    planned, cost = dry_run(signature(program.source, inputs, wanted, batch, tangents))
    assert shapes(planned) == shapes(expected)
    assert cost.flops > 0 and cost.bytes >= sum(t.numel() * 8 for t in inputs.values())


def test_a_dry_run_refuses_what_the_real_run_refuses() -> None:
    with pytest.raises(ServiceError) as caught:
        dry_run(signature("x @ y", {"x": torch.zeros(3, dtype=F64), "y": torch.zeros(4, dtype=F64)}, ("grad",)))
    assert caught.value.error_type == "computation_failed"


class ElementsWritten(TorchDispatchMode):
    """The test's own measure of elementwise work in a real run: elements every op writes."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            self.elements += sum(
                t.numel() for t in (out if isinstance(out, tuple | list) else [out]) if isinstance(t, torch.Tensor)
            )
        return out


MATRIX_FORMULAS = [
    ("sum(A @ B)", {"A": (60, 40), "B": (40, 50)}, 2 * 60 * 40 * 50),
    ("a = tanh(A @ B)\nsum(a @ C)", {"A": (30, 20), "B": (20, 40), "C": (40, 10)}, 2 * (30 * 20 * 40 + 30 * 40 * 10)),
    ("sum(W @ W @ W @ W)", {"W": (32, 32)}, 3 * 2 * 32**3),
    ("sum(matmul(X, Y))", {"X": (4, 10, 6), "Y": (4, 6, 8)}, 2 * 4 * 10 * 6 * 8),
]


@pytest.mark.parametrize(("source", "sizes", "forward_flops"), MATRIX_FORMULAS)
@pytest.mark.parametrize("wanted", [("grad",), ("jvp",), ("grad", "hvp"), ("grad", "jacobian")])
def test_the_estimate_is_never_below_the_true_flops_of_matrix_products(
    source: str, sizes: dict[str, tuple[int, ...]], forward_flops: int, wanted: tuple[Derivative, ...]
) -> None:
    """Against torch's own FLOP counter over the real computation, and the forward product's
    multiply-adds counted by hand (every derivative at least runs the forward)."""
    generator = torch.Generator().manual_seed(0)
    inputs = {name: torch.randn(size, generator=generator, dtype=F64) for name, size in sizes.items()}
    tangents = {name: torch.randn(size, generator=generator, dtype=F64) for name, size in sizes.items()}
    directions = tangents if {"jvp", "hvp"} & set(wanted) else None
    with FlopCounterMode(display=False) as counter:
        real(source, inputs, wanted, tangents=directions)
    _, cost = dry_run(signature(source, inputs, wanted, tangents=directions))
    assert cost.flops >= counter.get_total_flops() >= forward_flops
    assert cost.flops <= 2 * counter.get_total_flops() + 100 * sum(t.numel() for t in inputs.values())


ELEMENTWISE_FORMULAS = ["sum(exp(sin(x)))", "mean(sigmoid(x) * tanh(x) + x ** 2)", "logsumexp(softplus(x) - x)"]


@pytest.mark.parametrize("source", ELEMENTWISE_FORMULAS)
@pytest.mark.parametrize("wanted", [("grad",), ("jvp",), ("grad", "hvp")])
def test_the_estimate_of_elementwise_work_is_within_a_small_factor_of_the_elements_written(
    source: str, wanted: tuple[Derivative, ...]
) -> None:
    x = torch.randn(100_000, dtype=F64, generator=torch.Generator().manual_seed(1))
    tangents = {"x": torch.ones_like(x)} if {"jvp", "hvp"} & set(wanted) else None
    with ElementsWritten() as measured:
        real(source, {"x": x}, wanted, tangents=tangents)
    _, cost = dry_run(signature(source, {"x": x}, wanted, tangents=tangents))
    assert measured.elements <= cost.flops <= 4 * measured.elements


def test_peak_bytes_count_what_is_alive_at_once() -> None:
    n = 1_000_000
    x = torch.zeros(n, dtype=F64)
    # x, then x * x beside it, then their sum (one element): 16 n + 8 bytes at the peak.
    _, value_only = dry_run(signature("sum(x * x)", {"x": x}, ()))
    assert value_only.bytes == 16 * n + 8
    # Three products made one after another, each freed once the next sum is taken.
    _, sequential = dry_run(signature("a = sum(x * x)\nb = sum(x * 2)\na + b", {"x": x}, ()))
    assert sequential.bytes < 3 * 8 * n
    # The gradient: mul's backward makes grad * x for each of its two operands, then adds them
    # into x's gradient: with x, four vectors alive at once (and two scalars: the sum, its ones).
    _, with_grad = dry_run(signature("sum(x * x)", {"x": x}, ("grad",)))
    assert with_grad.bytes == 4 * 8 * n + 16


def test_a_computation_of_minutes_is_estimated_without_computing() -> None:
    """Twenty products of 4000 x 4000 matrices and their gradient: about 8 TFLOP, some minutes
    of a CPU; the dry run sees only shapes."""
    source = "\n".join(["a0 = W @ W", *(f"a{i} = a{i - 1} @ W" for i in range(1, 20)), "sum(a19)"])
    shape = {"W": torch.empty(4000, 4000, dtype=F64, device="meta")}
    planned, cost = dry_run(signature(source, shape, ("grad",)))
    assert planned.grad is not None and planned.grad["W"].shape == (4000, 4000)
    assert cost.flops >= 3 * 20 * 2 * 4000**3
    with pytest.raises(LimitExceeded) as caught:
        check_cost(cost, max_flops=10**10, max_elements=10**8)
    assert caught.value.error_type == "compute_too_large"
    assert caught.value.details == {"estimate": cost.flops, "limit": 10**10}


def test_a_batch_counts_every_point_against_the_size_limit() -> None:
    """A per-point intermediate of 1,000 elements at 2,000 points is 2,000,000 elements."""
    points = {"x": torch.empty(2_000, 1_000, dtype=F64, device="meta")}
    _, cost = dry_run(signature("sum(x * x)", points, ("grad",), batch=("x",)))
    assert cost.largest == 2_000_000
    with pytest.raises(LimitExceeded) as caught:
        check_cost(cost, max_flops=10**12, max_elements=1_000_000)
    assert caught.value.error_type == "intermediate_too_large"


def test_estimates_are_cached_per_signature() -> None:
    x = {"x": torch.zeros(7, dtype=F64)}
    first = dry_run(signature("sum(cos(x))", x, ("grad",)))
    assert dry_run(signature("sum(cos(x))", x, ("grad",))) is first
    assert dry_run(signature("sum(cos(x))", {"x": torch.zeros(8, dtype=F64)}, ("grad",))) is not first


def test_cost_public_fields() -> None:
    assert Cost(flops=3, bytes=4, largest=5).public() == {"flops": 3, "bytes": 4}


# --- The deadline, with a clock that moves one tick per look.


class Ticks:
    """A fake monotonic clock: each reading is one tick later."""

    def __init__(self) -> None:
        self.counter = itertools.count()

    def __call__(self) -> float:
        return float(next(self.counter))


def ops_of(job: Any) -> int:
    counter = CountOps()
    with counter:
        job()
    return counter.ops


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops += 1
        return func(*args, **(kwargs or {}))


JOBS: dict[str, tuple[str, tuple[Derivative, ...]]] = {
    "forward": ("sum(exp(sin(x)) * x)", ()),
    "backward": ("sum(exp(sin(x)) * x)", ("grad",)),
    "jacobian loop": ("exp(sin(x)) * x", ("jacobian",)),
    "hessian loop": ("sum(exp(sin(x)) * x)", ("hessian",)),
}


@pytest.mark.parametrize("job", list(JOBS))
def test_the_deadline_stops_the_computation_at_the_first_op_past_it(job: str) -> None:
    """With one tick per op, a deadline of k ticks lets exactly k ops run: in the forward pass,
    the backward pass, or the batched loops of a Jacobian or Hessian alike."""
    source, wanted = JOBS[job]
    x = torch.linspace(-1, 1, 5, dtype=F64)

    def work() -> Any:
        return real(source, {"x": x}, wanted)

    total = ops_of(work)
    assert total > 3
    for allowed in (0, total // 2, total - 1):
        counter = CountOps()
        with pytest.raises(DeadlineExceeded) as caught, counter, Deadline(allowed - 0.5, 2.0, clock=Ticks()):
            work()
        assert counter.ops == allowed
        assert "time budget of 2 s ran out while computing" in caught.value.message
    with Deadline(total - 0.5, 2.0, clock=Ticks()):
        work()  # exactly enough time
