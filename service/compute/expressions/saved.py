"""Saved formulas on the compute side: checking one before it is saved, its compiled program
(cached by version), and a request's inputs checked against its declared shapes and dtypes."""

from __future__ import annotations

import functools
import keyword
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from service.compute.budgets import META
from service.compute.expressions.differentiate import Signature, dry_run
from service.compute.expressions.language import Limits, Program, compile_program
from service.compute.ops.activations import ACTIVATIONS
from service.compute.ops.functions import FUNCTIONS
from service.compute.ops.losses import LOSSES
from service.compute.runtime import torch_errors
from service.compute.wire import ElementBudget, decode
from service.errors import InvalidInput, LimitExceeded
from service.store import FormulaInput, SavedFormula, check_name

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
MAX_RANK = 16
_INPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def check_formula_name(name: str) -> str:
    """A valid formula name (see ``service.store.check_name``) that is no activation's or loss's
    name (those are model names too, in the Open Inference Protocol)."""
    check_name(name)
    if name in ACTIVATIONS or name in LOSSES:
        raise InvalidInput(
            f"'{name}' is the name of an activation or a loss; choose another name for a formula.",
            error_type="invalid_name",
        )
    return name


def torch_dtype(spec: FormulaInput) -> torch.dtype:
    return TORCH_DTYPES[spec.dtype]


def compute_dtype(inputs: Mapping[str, FormulaInput]) -> torch.dtype:
    """float64 if any input is float64, else float32: the dtype of the formula's constants."""
    return torch.float64 if any(spec.dtype == "float64" for spec in inputs.values()) else torch.float32


def check_formula(
    expression: str,
    inputs: Mapping[str, FormulaInput],
    limits: Limits,
    *,
    max_elements: int,
    max_inputs: int,
) -> tuple[tuple[int, ...], torch.dtype]:
    """Refuse a formula that cannot be saved: too many inputs, a bad input name or shape, an
    expression outside the language or its limits, or one that does not evaluate at the declared
    shapes (run on the meta device: no memory, no time). Returns the value's shape and dtype."""
    if len(inputs) > max_inputs:
        raise LimitExceeded(
            f"The formula declares {len(inputs)} inputs, over the limit of {max_inputs}.",
            error_type="too_many_inputs",
            limit=max_inputs,
        )
    total = 0
    for name, spec in inputs.items():
        if not _INPUT_NAME.fullmatch(name) or keyword.iskeyword(name) or name in FUNCTIONS:
            raise InvalidInput(
                f"'{name}' cannot name an input: use a letter or '_' then letters, digits or '_' (at most 64), "
                "and no keyword or function name.",
                error_type="invalid_input_name",
                where=f"inputs.{name}",
            )
        if len(spec.shape) > MAX_RANK or any(size < 1 for size in spec.shape):
            raise InvalidInput(
                f"inputs.{name}.shape must have at most {MAX_RANK} sizes, each at least 1.",
                error_type="invalid_shape",
                where=f"inputs.{name}.shape",
            )
        total += _numel(spec.shape)
    if total > max_elements:
        raise LimitExceeded(
            f"The declared inputs hold {total} elements, over the limit of {max_elements}.",
            error_type="too_many_elements",
            limit=max_elements,
        )
    dtype = compute_dtype(inputs)
    meta = {name: torch.empty(spec.shape, dtype=torch_dtype(spec), device=META) for name, spec in inputs.items()}
    signature = Signature.of(
        expression, dtype, meta, None, (), max_entries=max_elements, max_elements=max_elements, limits=limits
    )
    with torch_errors("the formula"):
        value = dry_run(signature)[0].value
    if not value.dtype.is_floating_point:
        raise InvalidInput(
            f"The formula's value is {str(value.dtype).removeprefix('torch.')}, not floating-point: it has no "
            "derivatives to serve. Multiply a comparison by 1.0 to save it as a number.",
            error_type="not_floating",
        )
    return tuple(value.shape), value.dtype


@functools.lru_cache(maxsize=512)
def _compiled(
    thread: int,
    name: str,
    etag: str,
    expression: str,
    inputs: frozenset[str],
    dtype: torch.dtype,
    device: torch.device,
    limits: Limits,
    max_elements: int,
) -> Program:
    """One compiled program per thread: a program's size budget records the largest tensor of
    its evaluation, which two threads must not share."""
    return compile_program(expression, inputs, dtype, device, limits, max_elements)


def saved_program(
    formula: SavedFormula, dtype: torch.dtype, device: torch.device, limits: Limits, max_elements: int
) -> Program:
    """The formula's compiled program, cached by (name, version, dtype, device): compiled once
    per version (the ETag tells a formula deleted and saved again from the old one)."""
    program = _compiled(
        threading.get_ident(),
        formula.name,
        formula.etag,
        formula.expression,
        frozenset(formula.inputs),
        dtype,
        device,
        limits,
        max_elements,
    )
    program.budget.peak = 0  # this evaluation's own
    return program


def check_inputs(
    formula: SavedFormula, tensors: Mapping[str, torch.Tensor], batch: Sequence[str] | None = None
) -> None:
    """Refuse (400) ``tensors`` unless they are exactly the formula's inputs, each of its declared
    shape (with a leading batch dimension for the inputs named in ``batch``) and dtype."""
    for name in tensors:
        if name not in formula.inputs:
            raise _unknown_input(formula, name)
    missing = [name for name in formula.inputs if name not in tensors]
    if missing:
        raise InvalidInput(
            f"The formula '{formula.name}' needs the inputs {', '.join(formula.inputs)}; "
            f"missing: {', '.join(missing)}.",
            error_type="missing_input",
            where=f"inputs.{missing[0]}",
        )
    for name, tensor in tensors.items():
        spec = formula.inputs[name]
        shape = tuple(tensor.shape)
        batched = batch is not None and name in batch
        if (shape[1:] if batched else shape) != spec.shape or (batched and not shape):
            expected = "[" + ", ".join(["points", *map(str, spec.shape)]) + "]" if batched else str(list(spec.shape))
            raise InvalidInput(
                f"inputs.{name} has shape {list(shape)}, but the formula '{formula.name}' declares {expected}.",
                error_type="shape_mismatch",
                where=f"inputs.{name}",
            )
        if tensor.dtype != torch_dtype(spec):
            raise InvalidInput(
                f"inputs.{name} is {str(tensor.dtype).removeprefix('torch.')}, but the formula '{formula.name}' "
                f"declares {spec.dtype}.",
                error_type="dtype_mismatch",
                where=f"inputs.{name}",
            )


def decode_inputs(
    formula: SavedFormula,
    values: Mapping[str, Any],
    batch: Sequence[str] | None,
    device: torch.device,
    budget: ElementBudget,
) -> dict[str, torch.Tensor]:
    """A request's wire inputs as tensors of their declared dtypes, checked (``check_inputs``);
    a base64 one must be of its declared dtype already (numbers and nested arrays take it)."""
    tensors = {}
    for name, value in values.items():
        spec = formula.inputs.get(name)
        if spec is None:
            raise _unknown_input(formula, name)
        if isinstance(value, dict) and value.get("dtype", spec.dtype) != spec.dtype:
            raise InvalidInput(
                f"inputs.{name} is {value.get('dtype')}, but the formula '{formula.name}' declares {spec.dtype}.",
                error_type="dtype_mismatch",
                where=f"inputs.{name}",
            )
        tensors[name] = decode(value, where=f"inputs.{name}", dtype=torch_dtype(spec), device=device, budget=budget)
    check_inputs(formula, tensors, batch)
    return tensors


def _unknown_input(formula: SavedFormula, name: str) -> InvalidInput:
    return InvalidInput(
        f"The formula '{formula.name}' has no input '{name}'; its inputs are {', '.join(formula.inputs) or 'none'}.",
        error_type="unknown_name",
        where=f"inputs.{name}",
    )


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
