"""Every endpoint as a ``Call``: the request (method, path, JSON body) and how to read the answer.

Building bodies and reading results happens here, once, without any I/O; ``Client`` and
``AsyncClient`` only send what these functions build (see ``client.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, overload
from urllib.parse import quote

import numpy as np

from gradient_client._wire import Kind, Prepared, TensorLike, as_numpy, choose_dtype, is_array, prepare, to_wire
from gradient_client.results import (
    ActivationResult,
    DifferentiateResult,
    DryRunResult,
    LandscapeResult,
    LossResult,
    OptimizeResult,
)

T = TypeVar("T")

Objective = str | Mapping[str, Any]
"""A test function's name (``GET /v1/objectives``), or an expression objective
``{"expression": ..., "variable": "x", "inputs": {...}}``."""
OptimizerChoice = str | Mapping[str, Any]
Derivative = Literal["grad", "jacobian", "hessian", "jvp", "hvp"]
Integer = int | np.integer[Any]
"""An integer argument: a Python or a numpy one (sent as a Python number)."""
Real = float | np.floating[Any]
"""A real argument: a Python or a numpy one (sent as a Python number)."""

RESPONSE_ENCODING = "base64"
"""Response tensors always come back base64-encoded: exact, as fast as JSON text for small
tensors (below 64 elements both cost the same) and much faster for large ones (see
docs/client.md#encodings)."""


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request, and how to read its answer's JSON body."""

    method: Literal["GET", "POST"]
    path: str
    parse: Callable[[Any], T]
    body: dict[str, Any] | None = None
    dtype: str | None = None
    """The request's dtype (what progress events, which carry no ``meta``, are read in)."""
    content: bytes | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.body is not None:
            try:
                text = json.dumps(self.body, allow_nan=False, separators=(",", ":"))
            except ValueError as exc:  # NaN or infinity outside a tensor: JSON has no such number
                raise ValueError(f"the request holds a number JSON cannot carry, outside a tensor: {exc}") from None
            object.__setattr__(self, "content", text.encode())


def _get(path: str, key: str | None = None) -> Call[Any]:
    def parse(body: Any) -> Any:
        return body if key is None else body[key]

    return Call("GET", path, parse)


def _post(
    path: str,
    parse: Callable[[Any], T],
    fields: dict[str, Any],
    dtype: str | None,
    device: str | None,
) -> Call[T]:
    """A compute request: ``fields`` with their ``Prepared`` tensors encoded in the request's
    dtype (chosen over them all), ``None`` fields left out (the service's defaults)."""
    tensors = list(_prepared(fields))
    chosen = choose_dtype(dtype, tensors)
    body = {name: _encoded(value, chosen) for name, value in fields.items() if value is not None}
    body["dtype"] = chosen
    if device is not None:
        body["device"] = device
    body["encoding"] = RESPONSE_ENCODING
    return Call("POST", path, parse, body, chosen)


def _prepared(value: Any) -> Iterator[Prepared]:
    if isinstance(value, Prepared):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _prepared(item)
    elif isinstance(value, list):
        for item in value:
            yield from _prepared(item)


def _encoded(value: Any, dtype: str) -> Any:
    """A field's JSON value: ``Prepared`` tensors in ``dtype``, numpy scalars as Python numbers,
    other arrays (an optimizer's ``betas``, say) as lists."""
    if isinstance(value, Prepared):
        return to_wire(value, dtype)
    if isinstance(value, Mapping):
        return {key: _encoded(item, dtype) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encoded(item, dtype) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if is_array(value):
        return as_numpy(value, "a value").tolist()
    return value


def _params(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """An activation's or a loss's ``params``: arrays and tensors (``pos_weight``) travel as
    request tensors, in the request's dtype; a 0-d one, as a numpy scalar, is a plain number."""
    if params is None:
        return None
    plain: dict[str, Any] = {}
    for name, value in params.items():
        if is_array(value):
            array = as_numpy(value, f"params.{name}")
            value = array.item() if array.ndim == 0 else prepare(array, Kind.FLOAT, f"params.{name}")
        plain[name] = value
    return plain


def _tensor(value: TensorLike | None, where: str, kind: Kind = Kind.FLOAT) -> Prepared | None:
    return None if value is None else prepare(value, kind, where)


def _tensors(values: Mapping[str, TensorLike] | None, where: str, kind: Kind) -> dict[str, Prepared] | None:
    if values is None:
        return None
    return {name: prepare(value, kind, f"{where}.{name}") for name, value in values.items()}


def _name(name: str) -> str:
    return quote(name, safe="")


# --- catalogs ----------------------------------------------------------------------------------


def activations() -> Call[list[dict[str, Any]]]:
    """The activations: each with its ``name``, ``formula``, ``elementwise`` and the JSON schema
    of its ``params``."""
    return _get("/v1/activations", "activations")


def losses() -> Call[list[dict[str, Any]]]:
    """The losses: each with its ``name``, ``formula``, ``params`` schema, ``target`` and
    ``weight`` kinds."""
    return _get("/v1/losses", "losses")


def functions() -> Call[dict[str, Any]]:
    """The expression language: ``{"functions": [{name, signature, doc, category}], "operators": [...]}``."""
    return _get("/v1/functions")


def objectives() -> Call[list[dict[str, Any]]]:
    """The test functions: each with its ``name``, ``formula``, ``dimension``, ``domain`` and
    known ``minima``."""
    return _get("/v1/objectives", "objectives")


def optimizers() -> Call[list[dict[str, Any]]]:
    """The optimizers: each with its ``name``, ``doc`` and the JSON schema of its ``params``."""
    return _get("/v1/optimizers", "optimizers")


def info() -> Call[dict[str, Any]]:
    """The service: ``name``, ``version``, torch and Python versions, ``devices``,
    ``default_device``, ``dtypes``, ``encodings`` and ``limits``."""
    return _get("/v1/info")


# --- computations ------------------------------------------------------------------------------


def activation(
    name: str,
    input: TensorLike,
    *,
    params: Mapping[str, Any] | None = None,
    grad_output: TensorLike | None = None,
    tangent: TensorLike | None = None,
    second_order: bool = False,
    jacobian: bool = False,
    dtype: str | None = None,
    device: str | None = None,
) -> Call[ActivationResult]:
    """An activation at ``input`` with its vector-Jacobian product ``grad`` (the elementwise
    derivative, with the default ``grad_output`` of ones), and on request its elementwise second
    derivative ``grad2``, full ``jacobian`` and forward-mode ``jvp`` along ``tangent``."""
    fields = {
        "input": prepare(input, Kind.FLOAT, "input"),
        "params": _params(params),
        "grad_output": _tensor(grad_output, "grad_output"),
        "tangent": _tensor(tangent, "tangent"),
        "second_order": second_order or None,
        "jacobian": jacobian or None,
    }
    return _post(f"/v1/activations/{_name(name)}", ActivationResult.parse, fields, dtype, device)


def loss(
    name: str,
    input: TensorLike,
    target: TensorLike | None = None,
    weight: TensorLike | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    grad_output: TensorLike | None = None,
    dtype: str | None = None,
    device: str | None = None,
) -> Call[LossResult]:
    """A loss and its gradients with respect to ``input``, ``target`` and ``weight``. Integer
    targets (integer arrays, Python integers) travel as int64: class indices."""
    fields = {
        "input": prepare(input, Kind.FLOAT, "input"),
        "target": _tensor(target, "target", Kind.INDEX),
        "weight": _tensor(weight, "weight"),
        "params": _params(params),
        "grad_output": _tensor(grad_output, "grad_output"),
    }
    return _post(f"/v1/losses/{_name(name)}", LossResult.parse, fields, dtype, device)


@overload
def differentiate(
    expression: str,
    inputs: Mapping[str, TensorLike] | None = None,
    *,
    wrt: str | Sequence[str] | None = None,
    derivatives: Derivative | Sequence[Derivative] = ("grad",),
    grad_output: TensorLike | None = None,
    tangents: Mapping[str, TensorLike] | None = None,
    batch: str | Sequence[str] | None = None,
    dry_run: Literal[False] = False,
    dtype: str | None = None,
    device: str | None = None,
) -> Call[DifferentiateResult]: ...


@overload
def differentiate(
    expression: str,
    inputs: Mapping[str, TensorLike] | None = None,
    *,
    wrt: str | Sequence[str] | None = None,
    derivatives: Derivative | Sequence[Derivative] = ("grad",),
    grad_output: TensorLike | None = None,
    tangents: Mapping[str, TensorLike] | None = None,
    batch: str | Sequence[str] | None = None,
    dry_run: Literal[True],
    dtype: str | None = None,
    device: str | None = None,
) -> Call[DryRunResult]: ...


@overload
def differentiate(
    expression: str,
    inputs: Mapping[str, TensorLike] | None = None,
    *,
    wrt: str | Sequence[str] | None = None,
    derivatives: Derivative | Sequence[Derivative] = ("grad",),
    grad_output: TensorLike | None = None,
    tangents: Mapping[str, TensorLike] | None = None,
    batch: str | Sequence[str] | None = None,
    dry_run: bool = False,
    dtype: str | None = None,
    device: str | None = None,
) -> Call[DifferentiateResult] | Call[DryRunResult]: ...


def differentiate(
    expression: str,
    inputs: Mapping[str, TensorLike] | None = None,
    *,
    wrt: str | Sequence[str] | None = None,
    derivatives: Derivative | Sequence[Derivative] = ("grad",),
    grad_output: TensorLike | None = None,
    tangents: Mapping[str, TensorLike] | None = None,
    batch: str | Sequence[str] | None = None,
    dry_run: bool = False,
    dtype: str | None = None,
    device: str | None = None,
) -> Call[DifferentiateResult] | Call[DryRunResult]:
    """A formula's ``value`` and the ``derivatives`` asked for (any of ``grad``, ``jacobian``,
    ``hessian``, ``jvp``, ``hvp``) with respect to ``wrt`` (default: every floating input), at one
    point or, with ``batch``, at many (the named inputs' first dimension). ``dry_run`` computes
    nothing and returns a :class:`DryRunResult`: every result's shape and dtype, and the cost."""
    fields = {
        "expression": expression,
        "inputs": _tensors(inputs or {}, "inputs", Kind.INPUT),
        "wrt": _names(wrt),
        "derivatives": [derivatives] if isinstance(derivatives, str) else list(derivatives),
        "grad_output": _tensor(grad_output, "grad_output"),
        "tangents": _tensors(tangents, "tangents", Kind.FLOAT),
        "batch": _names(batch),
        "dry_run": dry_run or None,
    }
    if dry_run:
        return _post("/v1/differentiate", DryRunResult.parse, fields, dtype, device)
    return _post("/v1/differentiate", DifferentiateResult.parse, fields, dtype, device)


def optimize(
    objective: Objective,
    *,
    x0: TensorLike | None = None,
    starts: TensorLike | None = None,
    optimizer: OptimizerChoice | Sequence[OptimizerChoice] = "adam",
    steps: Integer | None = None,
    record_every: Integer | None = None,
    tolerance: Real | None = None,
    report: Literal["runs", "summary"] = "runs",
    reach_tolerance: Real | None = None,
    dtype: str | None = None,
    device: str | None = None,
) -> Call[OptimizeResult]:
    """Runs of torch.optim optimizers from ``x0`` or from each of ``starts`` (one run per start
    and optimizer) on a test function or an expression. ``None`` means the service's default:
    ``steps`` 20000, ``record_every`` 2000, no ``tolerance``, ``reach_tolerance`` 0.001."""
    fields = {
        "objective": _objective(objective),
        "x0": _tensor(x0, "x0"),
        "starts": _tensor(starts, "starts"),
        "optimizer": _optimizer(optimizer),
        "steps": steps,
        "record_every": record_every,
        "tolerance": tolerance,
        "report": report,
        "reach_tolerance": reach_tolerance,
    }
    return _post("/v1/optimize", OptimizeResult.parse, fields, dtype, device)


def landscape(
    objective: Objective,
    x_range: Sequence[Real],
    y_range: Sequence[Real],
    *,
    resolution: Integer | Sequence[Integer] | None = None,
    gradient: bool = False,
    dtype: str | None = None,
    device: str | None = None,
) -> Call[LandscapeResult]:
    """A two-dimensional objective sampled on a grid over ``x_range`` x ``y_range``,
    ``resolution`` points per axis (or ``(nx, ny)``; the service's default is 100), with the
    gradient at every point when ``gradient``."""
    fields = {
        "objective": _objective(objective),
        "x_range": [float(value) for value in x_range],
        "y_range": [float(value) for value in y_range],
        "resolution": _resolution(resolution),
        "gradient": gradient or None,
    }
    return _post("/v1/landscape", LandscapeResult.parse, fields, dtype, device)


def _resolution(resolution: Integer | Sequence[Integer] | None) -> Integer | list[Integer] | None:
    if resolution is None or isinstance(resolution, int | np.integer):
        return resolution
    return list(resolution)


OBJECTIVE_KEYS = frozenset({"expression", "variable", "inputs"})


def _objective(objective: Objective) -> str | dict[str, Any]:
    if isinstance(objective, str):
        return objective
    unknown = set(objective) - OBJECTIVE_KEYS
    if unknown or "expression" not in objective:
        raise ValueError(
            f"an expression objective is a mapping with 'expression' and optionally 'variable' and 'inputs' "
            f"(got the keys {sorted(objective)})"
        )
    body: dict[str, Any] = {"expression": objective["expression"]}
    if objective.get("variable") is not None:
        body["variable"] = objective["variable"]
    if objective.get("inputs") is not None:
        body["inputs"] = _tensors(objective["inputs"], "objective.inputs", Kind.INPUT)
    return body


def _optimizer(choice: OptimizerChoice | Sequence[OptimizerChoice]) -> Any:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, Mapping):
        return dict(choice)
    return [item if isinstance(item, str) else dict(item) for item in choice]


def _names(names: str | Sequence[str] | None) -> list[str] | None:
    if names is None:
        return None
    return [names] if isinstance(names, str) else list(names)
