"""Every optimizer against torch.optim itself, with hyper-parameters drawn from its whole schema.

The oracle is torch's own class, named in a table here (not read from the registry), built with
the request's values passed straight in as keyword arguments, and stepped by the plain loop:
``zero_grad(); loss.backward(); step()`` (a closure for lbfgs). Each run is looked at as the
service looks at it: it ends at the first step whose value or gradient is not finite
(``diverged``), else after ``steps`` steps; its trajectory holds every ``record_every``-th point.

Which path the service takes, and so what each run is compared with (float64 throughout):

* A traceable objective (Himmelblau, batched; or a [d] -> scalar function, vmapped): the starts
  share one [N, d] parameter and the gradients come from the traced graph. Adam and AdamW step
  with torch's fused kernel (``torch._fused_adam_`` / ``torch._fused_adamw_``), every other
  elementwise optimizer with its torch class's own ``step()``.
* An objective tracing cannot follow (a Python branch on a value): plain autograd, one [N, d]
  parameter for a batched objective, and every optimizer's torch class as the registry builds
  it, so Adam and AdamW take torch's default (single-tensor, not fused) implementation.
* lbfgs: always start by start, with a closure, whatever the objective.

Each run then equals, bitwise, one loop per start of torch's class -- except on the fused path:
torch's fused CPU kernel rounds differently in its vectorised body and its scalar tail, so the
same start gives different last bits at different positions of a tensor (measured over several
hundred drawn runs of 60 steps: up to 7e-15 relative, but 9e-12 where the dynamics are
chaotic, at lr 0.16 and beta2 0.15). The fused path's reference is therefore ``Adam(..., fused=True)`` /
``AdamW(..., fused=True)`` over the same [N, d] parameter (the kernel is elementwise: still N
independent runs), and that comparison is bitwise; with one start it is one loop per start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from fastapi.exceptions import RequestValidationError
from hypothesis import given, settings
from hypothesis import strategies as st

from service.api.endpoints import validate_params
from service.compute.optimisation import Objective, Run, Schedule, optimize
from service.compute.optimisation.objectives import OBJECTIVES
from service.compute.optimisation.optimizers import OPTIMIZERS, FusedAdam
from service.compute.optimisation.traced import trace_value_and_grad
from service.errors import NotFound
from tests.helpers import examples

F64 = torch.float64
HIMMELBLAU = OBJECTIVES.get("himmelblau").fn

TORCH_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    "adamax": torch.optim.Adamax,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "lbfgs": torch.optim.LBFGS,
}
"""The service's optimizer names, in catalog order, and the torch class each one runs."""

FUSED = {"adam", "adamw"}
"""Stepped by torch's fused kernel on the traced path."""

SERVICE_DEFAULTS: dict[str, dict[str, Any]] = {"lbfgs": {"line_search_fn": "strong_wolfe"}}
"""The documented defaults that differ from torch's (torch's lbfgs has no line search by default)."""


def torch_kwargs(name: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """A request's optimizer values as keyword arguments of the torch class: lists are tuples,
    the line search "none" is None, and what the request leaves out is torch's own default,
    except where the service documents another."""
    kwargs: dict[str, Any] = dict(SERVICE_DEFAULTS.get(name, {}))
    for key, value in request.items():
        kwargs[key] = tuple(value) if isinstance(value, list) else None if value == "none" else value
    return kwargs


def service_settings(name: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """What POST /v1/optimize hands the engine for a request's optimizer values: every
    hyper-parameter, the registered default where the request has none."""
    return {**OPTIMIZERS.get(name).defaults(), **request}


@dataclass
class Expected:
    """One run as torch's loop makes it."""

    x: torch.Tensor
    value: float
    grad_norm: float
    steps: int
    stopped: str
    trajectory: list[tuple[int, torch.Tensor, float]] = field(default_factory=list)


def reference_runs(
    name: str,
    request: Mapping[str, Any],
    fn: Callable[[torch.Tensor], torch.Tensor],
    starts: torch.Tensor,
    steps: int,
    record_every: int,
    *,
    one_parameter: bool = False,
    **extra: Any,
) -> list[Expected]:
    """torch's loop of the request's optimizer from each start: one loop per start, or with
    ``one_parameter`` one loop over all starts as one [N, d] parameter (``fn`` summed over the
    rows). ``extra``: more keyword arguments of the class (``fused=True``)."""
    if one_parameter:
        return _loop(name, request, fn, starts, steps, record_every, extra)
    return [_loop(name, request, fn, start, steps, record_every, extra)[0] for start in starts]


def _loop(
    name: str,
    request: Mapping[str, Any],
    fn: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    steps: int,
    record_every: int,
    extra: Mapping[str, Any],
) -> list[Expected]:
    x = x0.detach().clone().requires_grad_(True)
    optimizer = TORCH_CLASSES[name]([x], **torch_kwargs(name, request), **extra)
    d = x0.shape[-1]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = fn(x).sum()
        loss.backward()
        return loss

    ends: list[Expected | None] = [None] * (x0.numel() // d)
    trajectories: list[list[tuple[int, torch.Tensor, float]]] = [[] for _ in ends]
    for step in range(steps + 1):
        optimizer.zero_grad()
        values = fn(x)
        values.sum().backward()
        assert x.grad is not None
        rows, grads, flat = x.detach().reshape(-1, d), x.grad.reshape(-1, d), values.detach().reshape(-1)
        for row, end in enumerate(ends):
            if end is not None:
                continue
            point, value = rows[row].clone(), float(flat[row])
            recorded = step % record_every == 0
            if recorded:
                trajectories[row].append((step, point, value))
            finite = math.isfinite(value) and bool(torch.isfinite(grads[row]).all())
            if not finite or step == steps:
                if not recorded:
                    trajectories[row].append((step, point, value))
                norm = float(torch.linalg.vector_norm(grads[row]))
                stopped = "max_steps" if finite else "diverged"
                ends[row] = Expected(point, value, norm, step, stopped, trajectories[row])
        if all(end is not None for end in ends):
            break
        if name == "lbfgs":
            optimizer.step(closure)  # type: ignore[arg-type]  # LBFGS's closure returns the loss
        else:
            optimizer.step()
    return [end for end in ends if end is not None]


def close(actual: Any, expected: Any, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Equal numbers (NaN equal to NaN), or within the tolerances where the arithmetic differs."""
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=F64), torch.as_tensor(expected, dtype=F64), rtol=rtol, atol=atol, equal_nan=True
    )


def assert_runs_match(runs: list[Run], expected: list[Expected], rtol: float = 0.0, atol: float = 0.0) -> None:
    """Each run ends where and as its reference does, at the same points (bitwise by default)."""
    assert len(runs) == len(expected)
    for run, want in zip(runs, expected, strict=True):
        assert (run.stopped, run.steps) == (want.stopped, want.steps), run.start
        close(run.x, want.x, rtol, atol)
        close(run.value, want.value, rtol, atol)
        close(run.grad_norm, want.grad_norm, rtol, atol)
        assert run.trajectory.step == [step for step, _, _ in want.trajectory]
        close(torch.stack(run.trajectory.x), torch.stack([x for _, x, _ in want.trajectory]), rtol, atol)
        close(run.trajectory.value, [value for _, _, value in want.trajectory], rtol, atol)


def _untraceable(x: torch.Tensor) -> torch.Tensor:
    """Himmelblau after reading a number into Python, as a branch on a value would: tracing
    (with fake tensors, which hold no numbers) cannot follow it."""
    float(x.detach().sum())
    return HIMMELBLAU(x)


OBJECTIVE_PATHS = {
    "traced": Objective(HIMMELBLAU, batched=True),  # evaluated by the step machine (small runs)
    "traced-torch": Objective(HIMMELBLAU, batched=True),  # the same graph replayed by torch calls
    "vmapped": Objective(HIMMELBLAU, batched=False),  # [d] -> scalar, traced under vmap
    "autograd": Objective(_untraceable, batched=True),
}


def check(
    name: str,
    request: Mapping[str, Any],
    starts: torch.Tensor,
    steps: int,
    record_every: int,
    path: str = "traced",
) -> list[Run]:
    """The service's runs of ``request`` from ``starts`` equal torch's loops (see the module's doc)."""
    objective = OBJECTIVE_PATHS[path]
    settings = service_settings(name, request)
    optimizers = [(OPTIMIZERS.get(name), settings)]
    outcome = optimize(
        objective, starts, optimizers, Schedule(steps, record_every), step_machine=path != "traced-torch"
    )
    runs = outcome.runs()
    assert [run.start for run in runs] == list(range(len(starts)))
    if name in FUSED and path != "autograd":
        expected = reference_runs(
            name, request, HIMMELBLAU, starts, steps, record_every, one_parameter=True, fused=True
        )
    else:
        expected = reference_runs(name, request, HIMMELBLAU, starts, steps, record_every)
    assert_runs_match(runs, expected)
    return runs


# Hyper-parameters over the service's schema, inside torch's own valid ranges.


def log_uniform(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(math.log10(low), math.log10(high)).map(lambda exponent: 10.0**exponent)


def zero_or(strategy: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    return st.one_of(st.just(0.0), strategy)


UNIT = st.floats(0.0, 1.0)
BETAS = st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.floats(0.0, 1.0, exclude_max=True)).map(list)
EPS = log_uniform(1e-12, 1.0)
DECAY = zero_or(log_uniform(1e-4, 1.0))
ADAM_LIKE = {"lr": log_uniform(1e-4, 1.0), "betas": BETAS, "eps": EPS, "weight_decay": DECAY}

HYPER: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "sgd": {
        "lr": log_uniform(1e-5, 0.1),
        "momentum": zero_or(UNIT),
        "dampening": zero_or(UNIT),
        "weight_decay": DECAY,
        "nesterov": st.booleans(),
    },
    "adam": {**ADAM_LIKE, "amsgrad": st.booleans()},
    "adamw": {**ADAM_LIKE, "amsgrad": st.booleans()},
    "rmsprop": {
        "lr": log_uniform(1e-4, 1.0),
        "alpha": UNIT,
        "eps": EPS,
        "weight_decay": DECAY,
        "momentum": zero_or(UNIT),
        "centered": st.booleans(),
    },
    "adagrad": {
        "lr": log_uniform(1e-4, 10.0),
        "lr_decay": zero_or(log_uniform(1e-4, 1.0)),
        "weight_decay": DECAY,
        "initial_accumulator_value": zero_or(log_uniform(1e-4, 10.0)),
        "eps": EPS,
    },
    "adadelta": {"lr": log_uniform(1e-3, 10.0), "rho": UNIT, "eps": EPS, "weight_decay": DECAY},
    "adamax": ADAM_LIKE,
    "nadam": {**ADAM_LIKE, "momentum_decay": zero_or(log_uniform(1e-4, 1.0))},
    "radam": ADAM_LIKE,
    "lbfgs": {
        "lr": log_uniform(1e-3, 1.5),
        "max_iter": st.integers(1, 25),
        "history_size": st.integers(1, 1000),
        "tolerance_grad": zero_or(log_uniform(1e-12, 1e-2)),
        "tolerance_change": zero_or(log_uniform(1e-14, 1e-4)),
        "line_search_fn": st.sampled_from(["strong_wolfe", "none"]),
    },
}
"""Per optimizer, a strategy for each hyper-parameter; a request gives any subset of them."""


def _nesterov_valid(request: dict[str, Any]) -> dict[str, Any]:
    """torch's SGD takes Nesterov momentum only with momentum > 0 and no dampening."""
    if request.get("nesterov"):
        if request.get("momentum", 0.0) == 0.0:
            request["momentum"] = 0.9
        if "dampening" in request:
            request["dampening"] = 0.0
    return request


def requests(name: str) -> st.SearchStrategy[dict[str, Any]]:
    drawn = st.fixed_dictionaries({}, optional=HYPER[name])
    return drawn.map(_nesterov_valid) if name == "sgd" else drawn


COORDINATE = st.floats(-5.0, 5.0)
STARTS = st.lists(st.lists(COORDINATE, min_size=2, max_size=2), min_size=1, max_size=5).map(
    lambda rows: torch.tensor(rows, dtype=F64)
)


@st.composite
def schedules(draw: st.DrawFn, name: str) -> tuple[int, int]:
    steps = draw(st.integers(5, 20) if name == "lbfgs" else st.integers(20, 60))
    return steps, draw(st.integers(1, steps))


def test_the_registry_is_the_table() -> None:
    assert [spec.name for spec in OPTIMIZERS] == list(TORCH_CLASSES)
    for spec in OPTIMIZERS:
        assert spec.cls is TORCH_CLASSES[spec.name], spec.name
        assert [param.name for param in spec.params] == list(HYPER[spec.name]), spec.name
        assert (spec.fused is not None) == (spec.name in FUSED), spec.name


def test_the_objectives_take_the_paths_named() -> None:
    rows = torch.zeros(3, 2, dtype=F64)
    for path in ("traced", "vmapped"):
        trace_value_and_grad(OBJECTIVE_PATHS[path].fn, rows, OBJECTIVE_PATHS[path].batched)
    with pytest.raises(Exception, match="data-dependent"):
        trace_value_and_grad(_untraceable, rows, batched=True)


@pytest.mark.parametrize("name", list(TORCH_CLASSES))
def test_the_fused_kernel_steps_adam_and_adamw_only(name: str) -> None:
    rows = torch.zeros(3, 2, dtype=F64)
    update = OPTIMIZERS.get(name).update(rows, service_settings(name, {}))
    assert isinstance(update, FusedAdam) == (name in FUSED)


@pytest.mark.parametrize("name", list(TORCH_CLASSES))
@settings(max_examples=examples(8))
@given(data=st.data(), starts=STARTS)
def test_runs_equal_torchs_loops(name: str, data: st.DataObject, starts: torch.Tensor) -> None:
    request = data.draw(requests(name), label="request")
    steps, record_every = data.draw(schedules(name), label="steps, record_every")
    check(name, request, starts, steps, record_every)


@pytest.mark.parametrize("path", ["traced-torch", "vmapped", "autograd"])
@pytest.mark.parametrize("name", [name for name in TORCH_CLASSES if name != "lbfgs"])  # lbfgs: one path
@settings(max_examples=examples(3))
@given(data=st.data(), starts=STARTS)
def test_runs_on_the_other_paths_equal_torchs_loops(
    path: str, name: str, data: st.DataObject, starts: torch.Tensor
) -> None:
    request = data.draw(requests(name), label="request")
    steps, record_every = data.draw(schedules(name), label="steps, record_every")
    check(name, request, starts, steps, record_every, path)


SEVERAL = torch.tensor([[1.0, 0.0], [-4.0, 0.0], [4.0, 0.0], [0.5, -1.5], [-2.0, 3.5]], dtype=F64)

OFF_DEFAULT: list[tuple[str, dict[str, Any]]] = [
    ("sgd", {"lr": 2e-3, "momentum": 0.8, "dampening": 0.0, "weight_decay": 0.1, "nesterov": True}),
    ("sgd", {"lr": 2e-3, "momentum": 0.7, "dampening": 0.3, "weight_decay": 0.05, "nesterov": False}),
    ("adam", {"lr": 0.02, "betas": [0.7, 0.95], "eps": 1e-3, "weight_decay": 0.2, "amsgrad": False}),
    ("adam", {"lr": 0.02, "betas": [0.8, 0.9], "eps": 1e-5, "weight_decay": 0.05, "amsgrad": True}),
    ("adamw", {"lr": 0.02, "betas": [0.7, 0.95], "eps": 1e-3, "weight_decay": 0.2, "amsgrad": False}),
    ("adamw", {"lr": 0.02, "betas": [0.8, 0.9], "eps": 1e-5, "weight_decay": 0.05, "amsgrad": True}),
    ("rmsprop", {"lr": 3e-3, "alpha": 0.9, "eps": 1e-4, "weight_decay": 0.1, "momentum": 0.5, "centered": True}),
    ("rmsprop", {"lr": 3e-3, "alpha": 0.8, "eps": 1e-6, "weight_decay": 0.0, "momentum": 0.0, "centered": False}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.1, "initial_accumulator_value": 0.5, "eps": 1e-4}),
    ("adadelta", {"lr": 2.0, "rho": 0.8, "eps": 1e-3, "weight_decay": 0.1}),
    ("adamax", {"lr": 0.01, "betas": [0.7, 0.95], "eps": 1e-3, "weight_decay": 0.1}),
    ("nadam", {"lr": 0.01, "betas": [0.7, 0.95], "eps": 1e-3, "weight_decay": 0.1, "momentum_decay": 0.05}),
    ("radam", {"lr": 0.01, "betas": [0.7, 0.95], "eps": 1e-3, "weight_decay": 0.1}),
    (
        "lbfgs",
        {
            "lr": 0.5,
            "max_iter": 7,
            "history_size": 3,
            "tolerance_grad": 1e-9,
            "tolerance_change": 1e-12,
            "line_search_fn": "strong_wolfe",
        },
    ),
    (
        "lbfgs",
        {
            "lr": 0.01,
            "max_iter": 4,
            "history_size": 5,
            "tolerance_grad": 1e-9,
            "tolerance_change": 1e-12,
            "line_search_fn": "none",
        },
    ),
]
"""Every hyper-parameter away from its default (and each flag both ways), deterministically."""
DEFAULTS: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in TORCH_CLASSES]


@pytest.mark.parametrize(
    ("name", "request_values"),
    DEFAULTS + OFF_DEFAULT,
    ids=[f"{name}-defaults" for name in TORCH_CLASSES] + [f"{name}-{i}" for i, (name, _) in enumerate(OFF_DEFAULT)],
)
def test_given_and_default_values_reach_torch(name: str, request_values: dict[str, Any]) -> None:
    """A request with no values runs torch's defaults (lbfgs: with its line search); one with
    every value set runs those: several starts in one call, against one loop per start."""
    runs = check(name, request_values, SEVERAL, 30 if name != "lbfgs" else 8, 7)
    assert all(run.stopped == "max_steps" for run in runs)  # the cases are tame: every run went the distance
    if name in FUSED:  # one start: the fused kernel's run is bitwise one loop per start
        (one,) = optimize(
            OBJECTIVE_PATHS["traced"],
            SEVERAL[1:2],
            [(OPTIMIZERS.get(name), service_settings(name, request_values))],
            Schedule(30, 7),
        ).runs()
        (expected,) = reference_runs(name, request_values, HIMMELBLAU, SEVERAL[1:2], 30, 7, fused=True)
        assert_runs_match([one], [expected])


RANGES: dict[str, dict[str, str]] = {
    "sgd": {"lr": "(0, inf)", "momentum": "[0, inf)", "dampening": "[0, inf)", "weight_decay": "[0, inf)"},
    "adam": {"lr": "(0, inf)", "betas": "[0, 1)", "eps": "(0, inf)", "weight_decay": "[0, inf)"},
    "adamw": {"lr": "(0, inf)", "betas": "[0, 1)", "eps": "(0, inf)", "weight_decay": "[0, inf)"},
    "rmsprop": {
        "lr": "(0, inf)",
        "alpha": "[0, 1]",
        "eps": "(0, inf)",
        "weight_decay": "[0, inf)",
        "momentum": "[0, inf)",
    },
    "adagrad": {
        "lr": "(0, inf)",
        "lr_decay": "[0, inf)",
        "weight_decay": "[0, inf)",
        "initial_accumulator_value": "[0, inf)",
        "eps": "(0, inf)",
    },
    "adadelta": {"lr": "(0, inf)", "rho": "[0, 1]", "eps": "(0, inf)", "weight_decay": "[0, inf)"},
    "adamax": {"lr": "(0, inf)", "betas": "[0, 1)", "eps": "(0, inf)", "weight_decay": "[0, inf)"},
    "nadam": {
        "lr": "(0, inf)",
        "betas": "[0, 1)",
        "eps": "(0, inf)",
        "weight_decay": "[0, inf)",
        "momentum_decay": "[0, inf)",
    },
    "radam": {"lr": "(0, inf)", "betas": "[0, 1)", "eps": "(0, inf)", "weight_decay": "[0, inf)"},
    "lbfgs": {
        "lr": "(0, inf)",
        "max_iter": "[1, 1000]",
        "history_size": "[1, 1000]",
        "tolerance_grad": "[0, inf)",
        "tolerance_change": "[0, inf)",
    },
}
"""The documented range of every bounded hyper-parameter (betas: each of the two)."""


@dataclass(frozen=True)
class Bound:
    """One end of a documented range: the value there and whether the range includes it."""

    value: float
    closed: bool
    upper: bool

    def probes(self, integer: bool) -> list[tuple[float, bool]]:
        """Values at, just inside and just outside this end, each with whether it is in range."""
        inward = -math.inf if self.upper else math.inf
        inside = self.value + (-1 if self.upper else 1) if integer else math.nextafter(self.value, inward)
        outside = self.value + (1 if self.upper else -1) if integer else math.nextafter(self.value, -inward)
        return [(self.value, self.closed), (inside, True), (outside, False)]


def bounds(interval: str) -> list[Bound]:
    """The finite ends of "[0, 1)"-style interval text."""
    low, high = (part.strip() for part in interval[1:-1].split(","))
    ends = [Bound(float(low), interval[0] == "[", upper=False), Bound(float(high), interval[-1] == "]", upper=True)]
    return [end for end in ends if math.isfinite(end.value)]


def request_values(name: str, param: str, value: float) -> list[dict[str, Any]]:
    """Requests setting one value; for betas, one for each beta (the other one at 0.5)."""
    if param == "betas":
        return [{"betas": [value, 0.5]}, {"betas": [0.5, value]}]
    default = OPTIMIZERS.get(name).defaults()[param]
    return [{param: int(value) if isinstance(default, int) else value}]


def accepted(name: str, values: dict[str, Any]) -> bool:
    """Whether the service's request validation takes these optimizer values."""
    try:
        validate_params(OPTIMIZERS.get(name), values)
    except RequestValidationError as exc:
        errors = exc.errors()
    else:
        return True
    assert all(error["loc"][:3] == ("body", "params", next(iter(values))) for error in errors), errors
    return False


def torch_accepts(name: str, values: Mapping[str, Any]) -> bool:
    try:
        TORCH_CLASSES[name]([torch.zeros(2, dtype=F64, requires_grad=True)], **torch_kwargs(name, values))
    except ValueError:
        return False
    return True


BOUND_CASES = [
    (name, param, bound) for name, ranges in RANGES.items() for param, text in ranges.items() for bound in bounds(text)
]


def test_every_bounded_hyper_parameter_has_a_documented_range() -> None:
    bounded = {
        (spec.name, param.name)
        for spec in OPTIMIZERS
        for param in spec.params
        if any(getattr(param, key) is not None for key in ("ge", "gt", "le", "lt"))
    }
    assert bounded == {(name, param) for name, ranges in RANGES.items() for param in ranges}


@pytest.mark.parametrize(
    ("name", "param", "bound"),
    BOUND_CASES,
    ids=[f"{name}-{param}-{'upper' if bound.upper else 'lower'}" for name, param, bound in BOUND_CASES],
)
def test_values_at_and_either_side_of_each_bound(name: str, param: str, bound: Bound) -> None:
    """At a closed end the value is taken, at an open one refused; just inside taken, just
    outside refused; and torch's own class takes every value the service takes."""
    integer = isinstance(OPTIMIZERS.get(name).defaults()[param], int)
    for value, inside in bound.probes(integer):
        for values in request_values(name, param, value):
            assert accepted(name, values) == inside, values
            if inside:
                assert torch_accepts(name, values), values


@pytest.mark.parametrize("name", list(TORCH_CLASSES))
def test_every_value_torch_refuses_is_a_validation_error(name: str) -> None:
    """torch.optim's constructors refuse some values with ValueError; the service refuses each
    of them before any work starts (it refuses more: lr 0, eps 0, rmsprop's alpha above 1)."""
    grid = [-1.0, -1e-300, 0.0, 1e-300, 0.5, 1.0, 1.0 + 2**-52, 2.0, 1e300]
    refused_by_torch = 0
    for param in OPTIMIZERS.get(name).defaults():
        if param not in RANGES[name]:
            continue
        for value in grid:
            for values in request_values(name, param, value):
                if not torch_accepts(name, values):
                    refused_by_torch += 1
                    assert not accepted(name, values), values
    assert refused_by_torch > 0  # torch checks at least lr < 0 in every class


@pytest.mark.parametrize("choice", ["strong_wolfe", "none"])
def test_lbfgs_line_search_choices_are_taken(choice: str) -> None:
    assert accepted("lbfgs", {"line_search_fn": choice})
    assert torch_accepts("lbfgs", {"line_search_fn": choice})


@pytest.mark.parametrize("choice", ["backtracking", "None", "", "strong-wolfe"])
def test_other_line_searches_are_validation_errors(choice: str) -> None:
    assert not accepted("lbfgs", {"line_search_fn": choice})


def test_an_unknown_optimizer_is_not_found_with_the_known_names() -> None:
    with pytest.raises(NotFound) as caught:
        OPTIMIZERS.get("adamm")
    assert caught.value.error_type == "unknown_optimizer"
    assert "There is no optimizer named 'adamm'" in str(caught.value)


def test_nesterov_without_momentum_is_refused_naming_it_with_the_reason() -> None:
    with pytest.raises(RequestValidationError) as caught:
        validate_params(OPTIMIZERS.get("sgd"), {"nesterov": True, "momentum": 0.0})
    (error,) = caught.value.errors()
    assert error["loc"] == ("body", "params", "nesterov")
    assert error["msg"] == "nesterov needs momentum > 0 and dampening 0"
    assert validate_params(OPTIMIZERS.get("sgd"), {"nesterov": True, "momentum": 0.9})["nesterov"] is True
