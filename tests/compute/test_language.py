"""The expression language against torch written out by hand, never against its own interpreter.

1. A table of plain torch calls for every mathematical function and every operator, each option
   of each (dims positive and negative, keepdim, p, keyword and positional forms, ...): value,
   vector-Jacobian product, Jacobian and Hessian of the language's formula equal autograd of the
   table's torch function. The table's names must be exactly the language's.
2. Every activation and loss called from the language, with options, against tests/oracles.py.
3. A hypothesis strategy that draws a random formula over the whole language and builds from the
   same tree both its source text and an independent torch function; value, gradient, Hessian
   and Jacobian must agree in float64.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from service.compute.expressions.differentiate import Derivative, Derivatives, differentiate
from service.compute.expressions.language import BINARY_OPS, OPERATOR_SYMBOLS, OPERATORS, Limits, compile_program
from service.compute.expressions.language import COMPARISONS as COMPILED_COMPARISONS
from service.compute.ops.functions import FUNCTIONS
from service.errors import InvalidInput
from tests import oracles
from tests.helpers import examples

F64 = torch.float64
CPU = torch.device("cpu")
LIMITS = Limits()
Env = Mapping[str, torch.Tensor]
Shape = tuple[int, ...]
TOLERANCE: dict[str, Any] = {"rtol": 1e-12, "atol": 1e-12}


def _table_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(14)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=F64)

    return {
        "x": torch.tensor([0.7, -1.3, 2.1], dtype=F64),
        "y": torch.tensor([1.1, 0.4, -0.6], dtype=F64),  # x > y is mixed: [False, False, True]
        "q": torch.tensor([0.7, 0.2, 2.1], dtype=F64),  # equal to x at 0 and 2
        "pos": torch.tensor([0.3, 1.7, 2.9], dtype=F64),
        "s": torch.tensor(0.8, dtype=F64),
        "A": randn(2, 3),
        "B": randn(3, 4),
        "M": randn(3, 3),
        "T": randn(2, 3, 4),
        "Bt": randn(2, 3, 3),
    }


INPUTS = _table_inputs()


@dataclass(frozen=True)
class Case:
    source: str
    expected: Callable[[Env], torch.Tensor]
    """The same formula as plain torch, on the inputs by name."""


def c(source: str, expected: Callable[[Env], torch.Tensor]) -> Case:
    return Case(source, expected)


def norm(t: torch.Tensor, p: float, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    result: torch.Tensor = torch.linalg.vector_norm(t, ord=p, dim=dim, keepdim=keepdim)
    return result


INF = float("inf")

MATH: dict[str, tuple[Case, ...]] = {
    "exp": (c("exp(x)", lambda v: torch.exp(v["x"])), c("exp(A)", lambda v: torch.exp(v["A"]))),
    "log": (c("log(pos)", lambda v: torch.log(v["pos"])),),
    "log2": (c("log2(pos)", lambda v: torch.log2(v["pos"])),),
    "log10": (c("log10(pos)", lambda v: torch.log10(v["pos"])), c("log10(x * x)", lambda v: torch.log10(v["x"] ** 2))),
    "log1p": (c("log1p(pos)", lambda v: torch.log1p(v["pos"])), c("log1p(y)", lambda v: torch.log1p(v["y"]))),
    "sqrt": (c("sqrt(pos)", lambda v: torch.sqrt(v["pos"])),),
    "abs": (c("abs(x)", lambda v: torch.abs(v["x"])), c("abs(A)", lambda v: torch.abs(v["A"]))),
    "sin": (c("sin(x)", lambda v: torch.sin(v["x"])),),
    "cos": (c("cos(x)", lambda v: torch.cos(v["x"])),),
    "tan": (c("tan(x)", lambda v: torch.tan(v["x"])), c("tan(A)", lambda v: torch.tan(v["A"]))),
    "sinh": (c("sinh(x)", lambda v: torch.sinh(v["x"])),),
    "cosh": (c("cosh(x)", lambda v: torch.cosh(v["x"])),),
    "sum": (
        c("sum(x)", lambda v: torch.sum(v["x"])),
        c("sum(T)", lambda v: torch.sum(v["T"])),
        c("sum(T, dim=1)", lambda v: torch.sum(v["T"], dim=1)),
        c("sum(T, dim=-1)", lambda v: torch.sum(v["T"], dim=-1)),
        c("sum(T, 0)", lambda v: torch.sum(v["T"], dim=0)),
        c("sum(T, 1, True)", lambda v: torch.sum(v["T"], dim=1, keepdim=True)),
        c("sum(T, keepdim=True)", lambda v: torch.sum(v["T"], dim=None, keepdim=True)),
        c("sum(T, dim=-2, keepdim=True)", lambda v: torch.sum(v["T"], dim=-2, keepdim=True)),
        c("sum(T, keepdim=False, dim=2)", lambda v: torch.sum(v["T"], dim=2)),
        c("sum(T, dim=0, keepdim=True)", lambda v: torch.sum(v["T"], dim=0, keepdim=True)),
        c("sum(x, 0, keepdim=True)", lambda v: torch.sum(v["x"], dim=0, keepdim=True)),
    ),
    "mean": (
        c("mean(T)", lambda v: torch.mean(v["T"])),
        c("mean(T, dim=2)", lambda v: torch.mean(v["T"], dim=2)),
        c("mean(T, -3)", lambda v: torch.mean(v["T"], dim=-3)),
        c("mean(T, dim=1, keepdim=True)", lambda v: torch.mean(v["T"], dim=1, keepdim=True)),
        c("mean(A, -1, True)", lambda v: torch.mean(v["A"], dim=-1, keepdim=True)),
        c("mean(T, keepdim=True)", lambda v: torch.mean(v["T"], dim=None, keepdim=True)),
    ),
    "prod": (
        c("prod(x)", lambda v: torch.prod(v["x"])),
        c("prod(A)", lambda v: torch.prod(v["A"])),
        c("prod(T, dim=1)", lambda v: torch.prod(v["T"], dim=1)),
        c("prod(T, -1, True)", lambda v: torch.prod(v["T"], dim=-1, keepdim=True)),
        c("prod(A, keepdim=True)", lambda v: torch.prod(v["A"]).reshape(1, 1)),
        c("prod(A, dim=0, keepdim=False)", lambda v: torch.prod(v["A"], dim=0)),
    ),
    "max": (
        c("max(x)", lambda v: torch.max(v["x"])),
        c("max(T)", lambda v: torch.max(v["T"])),
        c("max(T, dim=1)", lambda v: torch.max(v["T"], dim=1).values),
        c("max(T, -1, True)", lambda v: torch.max(v["T"], dim=-1, keepdim=True).values),
        c("max(T, keepdim=True)", lambda v: torch.amax(v["T"], dim=(0, 1, 2), keepdim=True)),
        c("max(A, dim=0, keepdim=False)", lambda v: torch.max(v["A"], dim=0).values),
        c("max(T, keepdim=True, dim=-3)", lambda v: torch.max(v["T"], dim=-3, keepdim=True).values),
    ),
    "min": (
        c("min(x)", lambda v: torch.min(v["x"])),
        c("min(T)", lambda v: torch.min(v["T"])),
        c("min(T, dim=2)", lambda v: torch.min(v["T"], dim=2).values),
        c("min(T, -2, True)", lambda v: torch.min(v["T"], dim=-2, keepdim=True).values),
        c("min(A, keepdim=True)", lambda v: torch.amin(v["A"], dim=(0, 1), keepdim=True)),
        c("min(A, dim=1, keepdim=True)", lambda v: torch.min(v["A"], dim=1, keepdim=True).values),
    ),
    "maximum": (
        c("maximum(x, y)", lambda v: torch.maximum(v["x"], v["y"])),
        c("maximum(A, x)", lambda v: torch.maximum(v["A"], v["x"])),
        c("maximum(x, 0)", lambda v: torch.maximum(v["x"], torch.tensor(0.0, dtype=F64))),
        c("maximum(b=y, a=A)", lambda v: torch.maximum(v["A"], v["y"])),
    ),
    "minimum": (
        c("minimum(x, y)", lambda v: torch.minimum(v["x"], v["y"])),
        c("minimum(A, x)", lambda v: torch.minimum(v["A"], v["x"])),
        c("minimum(s, x)", lambda v: torch.minimum(v["s"], v["x"])),
    ),
    "norm": (
        c("norm(x)", lambda v: norm(v["x"], 2)),
        c("norm(T)", lambda v: norm(v["T"], 2)),
        c("norm(x, p=1)", lambda v: norm(v["x"], 1)),
        c("norm(x, 3)", lambda v: norm(v["x"], 3)),
        c("norm(x, p=1.5)", lambda v: norm(v["x"], 1.5)),
        c("norm(x, p=0.5)", lambda v: norm(v["x"], 0.5)),
        c("norm(x, p=1e999)", lambda v: norm(v["x"], INF)),
        c("norm(x, p=-1e999)", lambda v: norm(v["x"], -INF)),
        c("norm(T, p=3, dim=1)", lambda v: norm(v["T"], 3, 1)),
        c("norm(T, 1.5, -1, True)", lambda v: norm(v["T"], 1.5, -1, True)),
        c("norm(A, p=1, dim=0, keepdim=True)", lambda v: norm(v["A"], 1, 0, True)),
        c("norm(T, dim=-2)", lambda v: norm(v["T"], 2, -2)),
        c("norm(T, p=4, keepdim=True)", lambda v: norm(v["T"], 4, None, True)),
    ),
    "logsumexp": (
        c("logsumexp(x)", lambda v: torch.logsumexp(v["x"], dim=-1)),
        c("logsumexp(T)", lambda v: torch.logsumexp(v["T"], dim=-1)),
        c("logsumexp(T, dim=0)", lambda v: torch.logsumexp(v["T"], dim=0)),
        c("logsumexp(T, 1, True)", lambda v: torch.logsumexp(v["T"], dim=1, keepdim=True)),
        c("logsumexp(T, dim=-2, keepdim=False)", lambda v: torch.logsumexp(v["T"], dim=-2)),
        c("logsumexp(A, keepdim=True)", lambda v: torch.logsumexp(v["A"], dim=-1, keepdim=True)),
    ),
    "matmul": (
        c("matmul(x, y)", lambda v: torch.matmul(v["x"], v["y"])),
        c("matmul(A, x)", lambda v: torch.matmul(v["A"], v["x"])),
        c("matmul(x, B)", lambda v: torch.matmul(v["x"], v["B"])),
        c("matmul(A, B)", lambda v: torch.matmul(v["A"], v["B"])),
        c("matmul(M, A.T)", lambda v: torch.matmul(v["M"], v["A"].T)),
        c("matmul(M, M)", lambda v: torch.matmul(v["M"], v["M"])),
        c("matmul(Bt, M)", lambda v: torch.matmul(v["Bt"], v["M"])),
        c("matmul(M, Bt)", lambda v: torch.matmul(v["M"], v["Bt"])),
        c("matmul(Bt, x)", lambda v: torch.matmul(v["Bt"], v["x"])),
        c("matmul(x, Bt)", lambda v: torch.matmul(v["x"], v["Bt"])),
        c("matmul(Bt, Bt)", lambda v: torch.matmul(v["Bt"], v["Bt"])),
        c("matmul(b=B, a=A)", lambda v: torch.matmul(v["A"], v["B"])),
    ),
    "dot": (c("dot(x, y)", lambda v: torch.dot(v["x"], v["y"])), c("dot(x, x)", lambda v: torch.dot(v["x"], v["x"]))),
    "transpose": (
        c("transpose(A)", lambda v: torch.transpose(v["A"], 0, 1)),
        c("transpose(T, 0, 2)", lambda v: torch.transpose(v["T"], 0, 2)),
        c("transpose(T, dim0=1, dim1=-1)", lambda v: torch.transpose(v["T"], 1, -1)),
        c("transpose(T, -3, 1)", lambda v: torch.transpose(v["T"], -3, 1)),
        c("transpose(T, dim1=2)", lambda v: torch.transpose(v["T"], 0, 2)),
        c("transpose(A, dim1=0, dim0=1)", lambda v: torch.transpose(v["A"], 1, 0)),
        c("transpose(M, 1, 1)", lambda v: torch.transpose(v["M"], 1, 1)),
        c("transpose(x, 0, -1)", lambda v: torch.transpose(v["x"], 0, -1)),
    ),
    "reshape": (
        c("reshape(A, 3, 2)", lambda v: v["A"].reshape(3, 2)),
        c("reshape(A, 6)", lambda v: v["A"].reshape(6)),
        c("reshape(T, 4, -1)", lambda v: v["T"].reshape(4, -1)),
        c("reshape(T, 2, 12)", lambda v: v["T"].reshape(2, 12)),
        c("reshape(x, 3, 1)", lambda v: v["x"].reshape(3, 1)),
        c("reshape(s, 1, 1)", lambda v: v["s"].reshape(1, 1)),
        c("reshape(reshape(s, 1))", lambda v: v["s"].reshape(1).reshape(())),
        c("reshape(Bt, -1, 2, 3)", lambda v: v["Bt"].reshape(-1, 2, 3)),
    ),
    "ones_like": (
        c("ones_like(T)", lambda v: torch.ones_like(v["T"])),
        c("x * ones_like(A)", lambda v: v["x"] * torch.ones_like(v["A"])),
    ),
    "zeros_like": (
        c("zeros_like(x)", lambda v: torch.zeros_like(v["x"])),
        c("zeros_like(A) + x", lambda v: torch.zeros_like(v["A"]) + v["x"]),
    ),
    "clamp": (
        c("clamp(x, min=0)", lambda v: torch.clamp(v["x"], min=0.0)),
        c("clamp(x, max=0.5)", lambda v: torch.clamp(v["x"], max=0.5)),
        c("clamp(x, min=-1, max=1)", lambda v: torch.clamp(v["x"], min=-1.0, max=1.0)),
        c("clamp(x, -1, 1.5)", lambda v: torch.clamp(v["x"], -1.0, 1.5)),
        c("clamp(A, max=-0.25)", lambda v: torch.clamp(v["A"], max=-0.25)),
        c("clamp(x, None, 0.5)", lambda v: torch.clamp(v["x"], max=0.5)),
        c("clamp(x, 0.5)", lambda v: torch.clamp(v["x"], min=0.5)),
        c("clamp(x, max=1, min=-0.5)", lambda v: torch.clamp(v["x"], min=-0.5, max=1.0)),
        c("clamp(x, min=1, max=0)", lambda v: torch.clamp(v["x"], min=1.0, max=0.0)),
    ),
    "where": (
        c("where(x > y, x, y)", lambda v: torch.where(v["x"] > v["y"], v["x"], v["y"])),
        c("where(x > 0, x * y, -x)", lambda v: torch.where(v["x"] > 0, v["x"] * v["y"], -v["x"])),
        c("where(A > x, A * 2, x ** 2)", lambda v: torch.where(v["A"] > v["x"], v["A"] * 2, v["x"] ** 2)),
        c("where(x <= 0.5, sin(x), A)", lambda v: torch.where(v["x"] <= 0.5, torch.sin(v["x"]), v["A"])),
        c("where(x > 0, x, 0)", lambda v: torch.where(v["x"] > 0, v["x"], torch.tensor(0.0, dtype=F64))),
        c("where(b=y, condition=x < y, a=pos)", lambda v: torch.where(v["x"] < v["y"], v["pos"], v["y"])),
    ),
}

COMPARISONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "<": torch.lt,
    "<=": torch.le,
    ">": torch.gt,
    ">=": torch.ge,
    "==": torch.eq,
    "!=": torch.ne,
}


def _comparison_cases(op: str) -> tuple[Case, ...]:
    compare = COMPARISONS[op]
    return (
        c(f"x {op} y", lambda v: compare(v["x"], v["y"])),
        c(f"x {op} q", lambda v: compare(v["x"], v["q"])),
        c(f"A {op} x", lambda v: compare(v["A"], v["x"])),
        c(f"x {op} 0.7", lambda v: compare(v["x"], torch.tensor(0.7, dtype=F64))),
        c(
            f"where(x {op} q, x * y, y ** 3)",
            lambda v: torch.where(compare(v["x"], v["q"]), v["x"] * v["y"], v["y"] ** 3),
        ),
        c(f"(A {op} y) * A", lambda v: compare(v["A"], v["y"]) * v["A"]),
    )


OPERATOR_CASES: dict[str, tuple[Case, ...]] = {
    "+": (
        c("x + y", lambda v: v["x"] + v["y"]),
        c("x + 2.5", lambda v: v["x"] + 2.5),
        c("A + x", lambda v: v["A"] + v["x"]),
        c("s + A", lambda v: v["s"] + v["A"]),
        c("x + x + x", lambda v: v["x"] + v["x"] + v["x"]),
    ),
    "-": (
        c("x - y", lambda v: v["x"] - v["y"]),
        c("1 - x", lambda v: 1 - v["x"]),
        c("A - x", lambda v: v["A"] - v["x"]),
        c("x - y - pos", lambda v: v["x"] - v["y"] - v["pos"]),
    ),
    "*": (
        c("x * y", lambda v: v["x"] * v["y"]),
        c("A * x", lambda v: v["A"] * v["x"]),
        c("x * 3", lambda v: v["x"] * 3),
        c("x * x * y", lambda v: v["x"] * v["x"] * v["y"]),
    ),
    "/": (
        c("x / pos", lambda v: v["x"] / v["pos"]),
        c("1 / pos", lambda v: 1 / v["pos"]),
        c("A / pos", lambda v: v["A"] / v["pos"]),
        c("x / 4", lambda v: v["x"] / 4),
        c("x / y / pos", lambda v: v["x"] / v["y"] / v["pos"]),
    ),
    "**": (
        c("x ** 2", lambda v: v["x"] ** 2),
        c("x ** 3", lambda v: v["x"] ** 3),
        c("x ** 1", lambda v: v["x"] ** 1),
        c("x ** 0", lambda v: v["x"] ** 0),
        c("pos ** 0.5", lambda v: v["pos"] ** 0.5),
        c("pos ** 2.5", lambda v: v["pos"] ** 2.5),
        c("pos ** -1.5", lambda v: v["pos"] ** -1.5),
        c("x ** -2", lambda v: v["x"] ** -2),
        c("pos ** y", lambda v: v["pos"] ** v["y"]),
        c("2 ** x", lambda v: 2 ** v["x"]),
        c("pos ** x ** 2", lambda v: v["pos"] ** (v["x"] ** 2)),
        c("-x ** 2", lambda v: -(v["x"] ** 2)),
        c("A ** 2", lambda v: v["A"] ** 2),
    ),
    "@": (
        c("x @ y", lambda v: v["x"] @ v["y"]),
        c("A @ x", lambda v: v["A"] @ v["x"]),
        c("x @ B", lambda v: v["x"] @ v["B"]),
        c("A @ B", lambda v: v["A"] @ v["B"]),
        c("A @ M", lambda v: v["A"] @ v["M"]),
        c("M @ M @ x", lambda v: v["M"] @ v["M"] @ v["x"]),
        c("Bt @ M", lambda v: v["Bt"] @ v["M"]),
        c("Bt @ x", lambda v: v["Bt"] @ v["x"]),
        c("Bt @ Bt", lambda v: v["Bt"] @ v["Bt"]),
        c("x @ A.T", lambda v: v["x"] @ v["A"].T),
    ),
    "unary +": (c("+x", lambda v: +v["x"]), c("-(+A)", lambda v: -(+v["A"]))),
    "unary -": (
        c("-x", lambda v: -v["x"]),
        c("-A", lambda v: -v["A"]),
        c("- -x", lambda v: v["x"]),
        c("+x", lambda v: v["x"]),
        c("-x * y", lambda v: -v["x"] * v["y"]),
        c("-(x + y)", lambda v: -(v["x"] + v["y"])),
    ),
    **{op: _comparison_cases(op) for op in COMPARISONS},
    "x[i, a:b]": (
        c("x[1]", lambda v: v["x"][1]),
        c("x[-1]", lambda v: v["x"][-1]),
        c("x[::2]", lambda v: v["x"][::2]),
        c("x[-2:]", lambda v: v["x"][-2:]),
        c("x[:-1]", lambda v: v["x"][:-1]),
        c("A[1, 2]", lambda v: v["A"][1, 2]),
        c("A[-1]", lambda v: v["A"][-1]),
        c("A[:, 1]", lambda v: v["A"][:, 1]),
        c("A[..., 1:]", lambda v: v["A"][..., 1:]),
        c("A[1:, :-1]", lambda v: v["A"][1:, :-1]),
        c("T[..., ::2]", lambda v: v["T"][..., ::2]),
        c("T[0, ..., -1]", lambda v: v["T"][0, ..., -1]),
        c("T[:, 1:3:1, ::3]", lambda v: v["T"][:, 1:3:1, ::3]),
        c("T[1][2]", lambda v: v["T"][1][2]),
        c("T[-1, -2, -3]", lambda v: v["T"][-1, -2, -3]),
        c("T[..., 1::2, 0]", lambda v: v["T"][..., 1::2, 0]),
        c("T[...]", lambda v: v["T"][...]),
        c("s[...]", lambda v: v["s"][...]),
        c("(x * y)[0:2]", lambda v: (v["x"] * v["y"])[0:2]),
    ),
    ".T": (
        c("A.T", lambda v: v["A"].t()),
        c("x.T", lambda v: v["x"]),
        c("s.T", lambda v: v["s"]),
        c("T.T", lambda v: v["T"].permute(2, 1, 0)),
        c("x @ Bt.T", lambda v: v["x"] @ v["Bt"].permute(2, 1, 0)),
        c("(A @ M).T", lambda v: (v["A"] @ v["M"]).t()),
    ),
    "name = expr": (
        c("h = x * y\nsum(h) + h[0]", lambda v: torch.sum(v["x"] * v["y"]) + (v["x"] * v["y"])[0]),
        c("a = x\nb = a * 2\nb - a", lambda v: v["x"] * 2 - v["x"]),
        c("z = A @ x\nw = exp(z)\nw / sum(w)", lambda v: torch.softmax(v["A"] @ v["x"], dim=0)),
    ),
}


def cotangent(shape: torch.Size, seed: int = 7) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def run_source(source: str, inputs: Mapping[str, torch.Tensor], wanted: list[Derivative]) -> Derivatives:
    program = compile_program(source, frozenset(inputs), F64, CPU, LIMITS)
    return differentiate(program, inputs, None, wanted, max_entries=10**6)


def hessian_source(source: str) -> str:
    """The formula's final line weighted by a fixed cotangent and summed: a scalar whose Hessian
    holds every second derivative of the formula."""
    *lines, last = source.split("\n")
    return "\n".join([*lines, f"sum(({last}) * cotangent)"])


def check_formula(
    source: str,
    expected: Callable[[Env], torch.Tensor],
    inputs: Mapping[str, torch.Tensor],
    wrt: list[str] | None = None,
    tolerance: Mapping[str, Any] = TOLERANCE,
    hessian: bool = True,
) -> None:
    """Value, VJP, Jacobian and Hessian of ``source`` w.r.t. ``wrt`` (default: every floating
    input it reads) equal autograd's through ``expected``, the same formula in plain torch."""
    program = compile_program(source, frozenset(inputs), F64, CPU, LIMITS)
    names = sorted(name for name in program.names if inputs[name].is_floating_point()) if wrt is None else wrt
    used = {name: inputs[name] for name in program.names}
    want = expected(inputs)
    differentiable = want.is_floating_point()
    wanted: list[Derivative] = ["grad", "jacobian"] if differentiable else []
    g = cotangent(want.shape)
    result = differentiate(program, used, names, wanted, grad_output=g if differentiable else None, max_entries=10**6)
    torch.testing.assert_close(result.value, want, **tolerance)
    if not differentiable:
        return

    def fn(*xs: torch.Tensor) -> torch.Tensor:
        return expected({**inputs, **dict(zip(names, xs, strict=True))})

    def weighted(*xs: torch.Tensor) -> torch.Tensor:
        return (fn(*xs) * g).sum()

    xs = tuple(inputs[name] for name in names)
    argnums = tuple(range(len(names)))
    vjps = torch.func.vjp(fn, *xs)[1](g)
    jacobians = torch.func.jacrev(fn, argnums=argnums)(*xs)
    assert result.grad is not None and result.jacobian is not None
    for i, name in enumerate(names):
        torch.testing.assert_close(result.grad[name], vjps[i], **tolerance)
        torch.testing.assert_close(result.jacobian[name], jacobians[i], **tolerance)
    if not hessian:
        return
    hessians = torch.func.jacrev(torch.func.jacrev(weighted, argnums=argnums), argnums=argnums)(*xs)
    hessian_program = compile_program(hessian_source(source), frozenset({*inputs, "cotangent"}), F64, CPU, LIMITS)
    second = differentiate(hessian_program, {**used, "cotangent": g}, names, ["hessian"], max_entries=10**6)
    assert second.hessian is not None
    torch.testing.assert_close(second.value, weighted(*xs), **tolerance)
    for i, name in enumerate(names):
        for j, other in enumerate(names):
            torch.testing.assert_close(second.hessian[name][other], hessians[i][j], **tolerance)


def _flatten(table: Mapping[str, tuple[Case, ...]]) -> list[Any]:
    return [pytest.param(case, id=f"{name}:{case.source}") for name, cases in table.items() for case in cases]


def language_names(category: str) -> set[str]:
    return {function.name for function in FUNCTIONS.values() if function.category == category}


def differing(table: set[str], language: set[str]) -> str:
    return f"in the language only: {sorted(language - table)}; in the table only: {sorted(table - language)}"


def test_the_table_names_exactly_the_languages_math_functions() -> None:
    assert set(MATH) == language_names("math"), differing(set(MATH), language_names("math"))


def test_the_table_names_exactly_the_languages_operators() -> None:
    """The operators GET /v1/functions lists, and the compiler's own operator tables."""
    assert set(OPERATOR_CASES) == set(OPERATORS), differing(set(OPERATOR_CASES), set(OPERATORS))
    assert {OPERATOR_SYMBOLS[op] for op in BINARY_OPS} | set(COMPARISONS) <= set(OPERATOR_CASES)
    assert len(COMPILED_COMPARISONS) == len(COMPARISONS)


@pytest.mark.parametrize("case", _flatten(MATH))
def test_math_functions_equal_plain_torch(case: Case) -> None:
    check_formula(case.source, case.expected, INPUTS)


@pytest.mark.parametrize("case", _flatten(OPERATOR_CASES))
def test_operators_equal_plain_torch(case: Case) -> None:
    check_formula(case.source, case.expected, INPUTS)


# 2. Activations and losses called from the language, against tests/oracles.py.

ACTIVATION_OPTIONS: dict[str, tuple[dict[str, Any], ...]] = {
    "sigmoid": ({},),
    "tanh": ({},),
    "relu": ({},),
    "leaky_relu": ({}, {"negative_slope": 0.2}, {"negative_slope": -0.5}),
    "selu": ({},),
    "softplus": ({}, {"beta": 2.0}, {"beta": 0.5, "threshold": 1.0}, {"threshold": 2.0}),
    "elu": ({}, {"alpha": 0.5}),
    "celu": ({}, {"alpha": 2.0}),
    "gelu": ({}, {"approximate": "tanh"}, {"approximate": "none"}),
    "silu": ({},),
    "mish": ({},),
    "hardtanh": ({}, {"min_val": -0.5}, {"max_val": 2.0}, {"min_val": -2.0, "max_val": 0.5}),
    "hardsigmoid": ({},),
    "hardswish": ({},),
    "relu6": ({},),
    "softsign": ({},),
    "logsigmoid": ({},),
    "tanhshrink": ({},),
    "softshrink": ({}, {"lambd": 1.0}),
    "hardshrink": ({}, {"lambd": 1.5}),
    "threshold": ({}, {"threshold": 0.5, "value": -2.0}, {"value": 3.0}),
    "softmax": ({}, {"dim": 0}, {"dim": 1}, {"dim": -2}),
    "log_softmax": ({}, {"dim": 0}, {"dim": -1}),
    "softmin": ({}, {"dim": 0}, {"dim": -1}),
}
# Away from every kink (0, +-0.5, +-1, +-1.5, +-2, +-3) and every softplus threshold crossing.
ACTIVATION_INPUT = torch.linspace(-3.85, 3.95, 12, dtype=F64).reshape(3, 4)


def options_positional(oracle: Callable[..., torch.Tensor], options: Mapping[str, Any], skip: int) -> str | None:
    """``options`` as positional arguments, in the oracle's own order, if they are a prefix of it."""
    order = list(inspect.signature(oracle).parameters)[skip:]
    if not options or set(options) != set(order[: len(options)]):
        return None
    return ", ".join(repr(options[name]) for name in order[: len(options)])


def keyword(options: Mapping[str, Any]) -> str:
    return "".join(f", {name}={value!r}" for name, value in options.items())


def _activation_cases() -> list[Any]:
    cases = []
    for name, variants in ACTIVATION_OPTIONS.items():
        oracle = oracles.ACTIVATIONS[name]
        for options in variants:
            sources = [f"{name}(x{keyword(options)})"]
            positional = options_positional(oracle, options, skip=1)
            if positional is not None:
                sources.append(f"{name}(x, {positional})")
            for source in sources:
                cases.append(pytest.param(c(source, activation_expected(oracle, options)), id=source))
    return cases


def activation_expected(
    oracle: Callable[..., torch.Tensor], options: Mapping[str, Any]
) -> Callable[[Env], torch.Tensor]:
    return lambda v: oracle(v["x"], **options)


def test_activation_options_name_exactly_the_languages_activations() -> None:
    assert set(ACTIVATION_OPTIONS) == language_names("activation")
    for name, variants in ACTIVATION_OPTIONS.items():
        options = set(inspect.signature(oracles.ACTIVATIONS[name]).parameters) - {"x"}
        assert {option for variant in variants for option in variant} == options, name


NO_HESSIAN = {"hardsigmoid"}
"""torch has no derivative for aten::hardsigmoid_backward, so the language refuses its Hessian."""


@pytest.mark.parametrize("case", _activation_cases())
def test_activations_in_the_language_equal_the_oracles(case: Case) -> None:
    name = case.source.partition("(")[0]
    # aten's hardsigmoid_backward multiplies by 1.0f / 6.0f: a float32 derivative, even in float64.
    tolerance: dict[str, Any] = {"rtol": 1e-7, "atol": 1e-12} if name == "hardsigmoid" else TOLERANCE
    inputs = {"x": ACTIVATION_INPUT}
    check_formula(case.source, case.expected, inputs, tolerance=tolerance, hessian=name not in NO_HESSIAN)


@pytest.mark.xfail(strict=True, raises=InvalidInput, reason="torch: hardsigmoid_backward has no derivative")
def test_the_hessian_of_hardsigmoid_is_zero() -> None:
    """Known gap (reported): the Hessian of a piecewise-linear activation is 0 wherever defined,
    but the language answers 400 computation_failed."""
    x = ACTIVATION_INPUT.flatten()
    result = run_source("sum(hardsigmoid(x))", {"x": x}, ["hessian"])
    assert result.hessian is not None
    torch.testing.assert_close(result.hessian["x"]["x"], torch.zeros(12, 12, dtype=F64), rtol=0, atol=0)


def _loss_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(15)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=F64)

    return {
        "z": randn(3, 4),  # logits, or any real input
        "r": randn(3, 4),  # a real target
        "t": torch.tensor([1, 3, 0]),  # class indices
        "cw": torch.tensor([0.5, 1.5, 1.0, 2.0], dtype=F64),  # class weights
        "pt": torch.softmax(randn(3, 4), dim=1),  # probabilities (rows sum to 1)
        "lp": torch.log_softmax(randn(3, 4), dim=1),  # log-probabilities
        "lq": torch.log_softmax(randn(3, 4), dim=1),
        "u": torch.sigmoid(randn(3, 4)),  # in (0, 1)
        "ew": torch.rand(3, 4, generator=generator, dtype=F64) + 0.5,  # elementwise weights
        "pw": torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=F64),  # positive-class weights
        "sg": torch.tensor([[1.0, -1.0, 1.0, 1.0], [-1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, 1.0]], dtype=F64),
        "cnt": torch.tensor([[0.0, 1.0, 2.0, 5.0], [3.0, 0.0, 1.0, 7.0], [2.0, 4.0, 0.0, 1.0]], dtype=F64),
        "rate": torch.rand(3, 4, generator=generator, dtype=F64) * 3 + 0.1,  # positive
    }


LOSS_INPUTS = _loss_inputs()


@dataclass(frozen=True)
class LossCase:
    source: str
    tensors: tuple[str, ...]
    """The input names the oracle takes as input, target (absent: none) and weight (absent: none)."""
    options: dict[str, Any]
    wrt: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.source.partition("(")[0]


def lc(source: str, tensors: str, wrt: str, **options: Any) -> LossCase:
    return LossCase(source, tuple(tensors.split()), options, tuple(wrt.split()))


LOSS_CASES: dict[str, tuple[LossCase, ...]] = {
    "mse": (
        lc("mse(z, r)", "z r", "z r"),
        lc("mse(z, r, reduction='sum')", "z r", "z r", reduction="sum"),
        lc("mse(z, r, 'none')", "z r", "z r", reduction="none"),
        lc("mse(target=r, input=z)", "z r", "z r"),
    ),
    "l1": (lc("l1(z, r)", "z r", "z r"), lc("l1(z, r, reduction='none')", "z r", "z r", reduction="none")),
    "smooth_l1": (
        lc("smooth_l1(z, r)", "z r", "z r"),
        lc("smooth_l1(z, r, beta=0.5)", "z r", "z r", beta=0.5),
        lc("smooth_l1(z, r, 'sum', 2.0)", "z r", "z r", reduction="sum", beta=2.0),
        lc("smooth_l1(z, r, reduction='none', beta=0)", "z r", "z r", reduction="none", beta=0.0),
    ),
    "huber": (
        lc("huber(z, r)", "z r", "z r"),
        lc("huber(z, r, delta=0.5)", "z r", "z r", delta=0.5),
        lc("huber(z, r, reduction='sum', delta=2)", "z r", "z r", reduction="sum", delta=2.0),
    ),
    "cross_entropy": (
        lc("cross_entropy(z, t)", "z t", "z"),
        lc("cross_entropy(z, t, cw)", "z t cw", "z"),
        lc("cross_entropy(z, t, weight=cw, reduction='sum')", "z t cw", "z", reduction="sum"),
        lc("cross_entropy(z, t, ignore_index=3)", "z t", "z", ignore_index=3),
        lc("cross_entropy(z, t, cw, 'none', 0)", "z t cw", "z", reduction="none", ignore_index=0),
        lc("cross_entropy(z, t, label_smoothing=0.2)", "z t", "z", label_smoothing=0.2),
        lc("cross_entropy(z, pt)", "z pt", "z pt"),
        lc(
            "cross_entropy(z, pt, weight=cw, label_smoothing=0.1, reduction='none')",
            "z pt cw",
            "z pt",
            label_smoothing=0.1,
            reduction="none",
        ),
    ),
    "nll": (
        lc("nll(lp, t)", "lp t", "lp"),
        lc("nll(lp, t, cw, 'sum')", "lp t cw", "lp", reduction="sum"),
        lc("nll(lp, t, weight=cw)", "lp t cw", "lp"),
        lc("nll(lp, t, ignore_index=0, reduction='none')", "lp t", "lp", ignore_index=0, reduction="none"),
    ),
    "binary_cross_entropy": (
        lc("binary_cross_entropy(u, pt)", "u pt", "u pt"),
        lc("binary_cross_entropy(u, pt, ew, 'sum')", "u pt ew", "u pt", reduction="sum"),
        lc("binary_cross_entropy(u, pt, reduction='none')", "u pt", "u pt", reduction="none"),
    ),
    "binary_cross_entropy_with_logits": (
        lc("binary_cross_entropy_with_logits(z, pt)", "z pt", "z pt"),
        lc("binary_cross_entropy_with_logits(z, pt, weight=ew)", "z pt ew", "z pt"),
        lc("binary_cross_entropy_with_logits(z, pt, pos_weight=pw)", "z pt", "z pt", pos_weight="pw"),
        lc(
            "binary_cross_entropy_with_logits(z, pt, ew, 'none', pw)",
            "z pt ew",
            "z pt",
            reduction="none",
            pos_weight="pw",
        ),
    ),
    "kl_div": (
        lc("kl_div(lp, pt)", "lp pt", "lp pt"),
        lc("kl_div(lp, pt, reduction='sum')", "lp pt", "lp pt", reduction="sum"),
        lc("kl_div(lp, pt, 'mean')", "lp pt", "lp pt", reduction="mean"),
        lc("kl_div(lp, pt, reduction='none')", "lp pt", "lp pt", reduction="none"),
        lc("kl_div(lp, lq, log_target=True)", "lp lq", "lp lq", log_target=True),
        lc("kl_div(lp, lq, 'sum', True)", "lp lq", "lp lq", reduction="sum", log_target=True),
    ),
    "poisson_nll": (
        lc("poisson_nll(z, cnt)", "z cnt", "z cnt"),
        lc("poisson_nll(rate, cnt, log_input=False)", "rate cnt", "rate cnt", log_input=False),
        lc("poisson_nll(z, cnt, full=True)", "z cnt", "z", full=True),  # w.r.t. cnt: see the xfail below
        lc(
            "poisson_nll(rate, cnt, 'sum', False, True, 0.001)",
            "rate cnt",
            "rate",
            reduction="sum",
            log_input=False,
            full=True,
            eps=0.001,
        ),
        lc(
            "poisson_nll(rate, cnt, reduction='none', log_input=False, eps=0.5)",
            "rate cnt",
            "rate cnt",
            **{
                "reduction": "none",
                "log_input": False,
                "eps": 0.5,
            },
        ),
    ),
    "soft_margin": (
        lc("soft_margin(z, sg)", "z sg", "z"),
        lc("soft_margin(z, sg, reduction='sum')", "z sg", "z", reduction="sum"),
        lc("soft_margin(z, sg, 'none')", "z sg", "z", reduction="none"),
    ),
    "entropy": (
        lc("entropy(pt)", "pt", "pt"),
        lc("entropy(pt, base='2')", "pt", "pt", base="2"),
        lc("entropy(pt, dim=0, reduction='none')", "pt", "pt", dim=0, reduction="none"),
        lc("entropy(pt, 'sum', 'e', -2)", "pt", "pt", reduction="sum", base="e", dim=-2),
    ),
}


def loss_expected(case: LossCase) -> Callable[[Env], torch.Tensor]:
    name = case.source.partition("(")[0]
    oracle = oracles.LOSSES[name]

    def expected(v: Env) -> torch.Tensor:
        tensors = [v[tensor] for tensor in case.tensors]
        if name == "entropy":
            tensors.append(None)  # type: ignore[arg-type]  # no target
        options = {key: v[value] if key == "pos_weight" else value for key, value in case.options.items()}
        return oracle(*tensors, **options)

    return expected


def test_loss_cases_name_exactly_the_languages_losses() -> None:
    assert set(LOSS_CASES) == language_names("loss")
    for name, cases in LOSS_CASES.items():
        options = set(inspect.signature(oracles.LOSSES[name]).parameters) - {"input", "target", "weight"}
        assert {option for case in cases for option in case.options} == options, name


@pytest.mark.parametrize(
    "case", [pytest.param(case, id=case.source) for cases in LOSS_CASES.values() for case in cases]
)
@pytest.mark.filterwarnings(  # functorch, from the service's Jacobian of soft_margin (reported)
    "ignore:There is a performance drop because we have not yet implemented the batching rule:UserWarning"
)
def test_losses_in_the_language_equal_the_oracles(case: LossCase) -> None:
    # torch's double backward of binary_cross_entropy adds EPSILON = 1e-12 to u (1 - u) (a
    # relative error of ~1e-10 at u = 0.97); the oracle's closed form is exact.
    tolerance: dict[str, Any] = {"rtol": 1e-9, "atol": 1e-12} if case.name == "binary_cross_entropy" else TOLERANCE
    check_formula(case.source, loss_expected(case), LOSS_INPUTS, wrt=list(case.wrt), tolerance=tolerance)


@pytest.mark.xfail(strict=True, reason="torch: log(0) * 0 in poisson_nll's Stirling term (reported)")
def test_poisson_nll_full_derivative_wrt_a_zero_count_is_finite() -> None:
    """Known bug (reported): the Stirling term is 0 where target <= 1, so the derivative w.r.t.
    such a target is -input; torch's masked_fill after t log t makes it NaN at target 0."""
    case = lc("poisson_nll(z, cnt, full=True)", "z cnt", "z cnt", full=True)
    check_formula(case.source, loss_expected(case), LOSS_INPUTS, wrt=list(case.wrt))


# 3. Random formulas over the whole language, with an independent torch function built from the
# same tree. Every node has a static shape; a production is only drawn where it fits the shape
# asked for, so every formula is valid, and arguments are kept in their functions' domains.

SHAPES: tuple[Shape, ...] = ((), (1,), (2,), (3,), (1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (2, 3), (3, 2), (3, 3))
"""Every shape of up to two dims of 1, 2 or 3 with 1, 2, 3, 6 or 9 elements: each one is an
input's shape or a reshape of one."""
GENERATED_INPUTS: dict[str, Shape] = {"s": (), "u": (2,), "x": (3,), "y": (2, 3), "W": (3, 3)}


def numel(shape: Shape) -> int:
    result = 1
    for size in shape:
        result *= size
    return result


def broadcast(*shapes: Shape) -> Shape | None:
    try:
        return tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        return None


@dataclass(frozen=True)
class Formula:
    """A formula's source and the same formula in torch, of a known shape."""

    source: str
    fn: Callable[[Env], torch.Tensor]
    shape: Shape
    kind: str = "atom"
    """atom (a name, a call, an index), number, or op (needs parentheses as an operand)."""

    def operand(self) -> str:
        return f"({self.source})" if self.kind == "op" else self.source

    def postfix(self) -> str:
        """As the left of ``[...]`` or ``.T``."""
        return self.source if self.kind == "atom" else f"({self.source})"


def constant(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=F64)


Sub = Callable[[Shape], Formula]
Scope = tuple[tuple[str, Shape], ...]
PARTNERS: dict[Shape, list[Shape]] = {s: [p for p in SHAPES if broadcast(s, p) == s] for s in SHAPES}
"""The shapes that broadcast into each shape."""


def read(name: str) -> Callable[[Env], torch.Tensor]:
    return lambda v: v[name]


def read_reshaped(name: str, shape: Shape) -> Callable[[Env], torch.Tensor]:
    return lambda v: v[name].reshape(shape)


def leaf(draw: st.DrawFn, shape: Shape, scope: Scope) -> Formula:
    # Assigned names first: they are the ones to read, and what a failing example shrinks to.
    options = [Formula(name, read(name), shape) for name, s in reversed(scope) if s == shape]
    for name, s in scope:
        if s != shape and numel(s) == numel(shape):
            dims = "".join(f", {size}" for size in shape)
            options.append(Formula(f"reshape({name}{dims})", read_reshaped(name, shape), shape))
    if shape == ():
        number = draw(st.sampled_from(["2", "0.5", "3", "1.5", "0.25", "10"]))
        options.append(Formula(number, lambda v: constant(float(number)), (), "number"))
    return draw(st.sampled_from(options))


def positive(draw: st.DrawFn, f: Formula) -> Formula:
    """``f`` mapped into (0, inf) by a formula of its own: for log, sqrt and fractional powers."""
    kind = draw(st.sampled_from(["square", "cos", "exp"]))
    if kind == "square":
        return Formula(f"1 + {f.operand()} ** 2", lambda v: torch.add(constant(1), f.fn(v) ** 2.0), f.shape, "op")
    if kind == "cos":
        return Formula(f"2 + cos({f.source})", lambda v: torch.add(constant(2), torch.cos(f.fn(v))), f.shape, "op")
    return Formula(f"exp(tanh({f.source}))", lambda v: torch.exp(torch.tanh(f.fn(v))), f.shape)


def negate(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    f = sub(shape)
    if draw(st.booleans()):
        return Formula(f"+{f.operand()}", f.fn, shape, "op")
    return Formula(f"-{f.operand()}", lambda v: torch.neg(f.fn(v)), shape, "op")


ARITHMETIC: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "+": torch.add,
    "-": torch.sub,
    "*": torch.mul,
    "/": torch.div,
}


def two_shapes(draw: st.DrawFn, shape: Shape) -> tuple[Shape, Shape]:
    """Two shapes that broadcast to exactly ``shape``."""
    other = draw(st.sampled_from(PARTNERS[shape]))
    return (shape, other) if draw(st.booleans()) else (other, shape)


def arithmetic(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    op = draw(st.sampled_from(list(ARITHMETIC)))
    left_shape, right_shape = two_shapes(draw, shape)
    left, right = sub(left_shape), sub(right_shape)
    if op == "/" and draw(st.booleans()):
        right = positive(draw, right)
    fn = ARITHMETIC[op]
    return Formula(f"{left.operand()} {op} {right.operand()}", lambda v: fn(left.fn(v), right.fn(v)), shape, "op")


def power(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    form = draw(st.sampled_from(["integer", "fraction", "tensor", "base"]))
    if form == "integer":
        integer = draw(st.sampled_from([2, 3, 1, 0]))
        base = sub(shape)
        return Formula(f"{base.operand()} ** {integer}", lambda v: base.fn(v) ** float(integer), shape, "op")
    if form == "fraction":
        text = draw(st.sampled_from(["0.5", "1.5", "2.5", "-1", "-0.5", "-2"]))
        base = positive(draw, sub(shape))
        return Formula(f"{base.operand()} ** {text}", lambda v: base.fn(v) ** float(text), shape, "op")
    if form == "tensor":
        base_shape, exponent_shape = two_shapes(draw, shape)
        base, exponent = positive(draw, sub(base_shape)), sub(exponent_shape)
        return Formula(
            f"{base.operand()} ** {exponent.operand()}",
            lambda v: torch.pow(base.fn(v), exponent.fn(v)),
            shape,
            "op",
        )
    number = draw(st.sampled_from(["2", "0.5", "3"]))
    power_of = sub(shape)
    return Formula(
        f"{number} ** {power_of.operand()}", lambda v: torch.pow(constant(float(number)), power_of.fn(v)), shape, "op"
    )


ELEMENTWISE: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str | None]] = {
    "exp": (torch.exp, None),
    "log": (torch.log, "positive"),
    "log2": (torch.log2, "positive"),
    "log10": (torch.log10, "positive"),
    "log1p": (torch.log1p, "positive"),
    "sqrt": (torch.sqrt, "positive"),
    "abs": (torch.abs, None),
    "sin": (torch.sin, None),
    "cos": (torch.cos, None),
    "tan": (torch.tan, "bounded"),
    "sinh": (torch.sinh, None),
    "cosh": (torch.cosh, None),
}


def elementwise(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    name = draw(st.sampled_from(list(ELEMENTWISE)))
    fn, domain = ELEMENTWISE[name]
    argument = sub(shape)
    if domain == "positive":
        argument = positive(draw, argument)
    elif domain == "bounded":  # |sin| <= 1 < pi / 2
        inner = argument
        argument = Formula(f"sin({inner.source})", lambda v: torch.sin(inner.fn(v)), shape)
    return Formula(f"{name}({argument.source})", lambda v: fn(argument.fn(v)), shape)


def _options(*pairs: tuple[str, list[Any]]) -> list[tuple[str, list[Any]]]:
    return list(pairs)


GENERATED_ACTIVATIONS: dict[str, tuple[Callable[..., torch.Tensor], list[tuple[str, list[Any]]]]] = {
    "sigmoid": (torch.sigmoid, []),
    "tanh": (torch.tanh, []),
    "relu": (F.relu, []),
    "leaky_relu": (F.leaky_relu, _options(("negative_slope", [0.01, 0.2, -0.5]))),
    "selu": (F.selu, []),
    "softplus": (F.softplus, _options(("beta", [1.0, 2.0, 0.5]), ("threshold", [20.0, 1.0, 2.5]))),
    "elu": (F.elu, _options(("alpha", [1.0, 0.5, 2.0]))),
    "celu": (F.celu, _options(("alpha", [1.0, 0.5, 2.0]))),
    "gelu": (F.gelu, _options(("approximate", ["none", "tanh"]))),
    "silu": (F.silu, []),
    "mish": (F.mish, []),
    "hardtanh": (F.hardtanh, _options(("min_val", [-1.0, -0.5, -2.0]), ("max_val", [1.0, 0.5, 2.0]))),
    "hardsigmoid": (F.hardsigmoid, []),
    "hardswish": (F.hardswish, []),
    "relu6": (F.relu6, []),
    "softsign": (F.softsign, []),
    "logsigmoid": (F.logsigmoid, []),
    "tanhshrink": (F.tanhshrink, []),
    "softshrink": (F.softshrink, _options(("lambd", [0.5, 0.25, 1.0]))),
    "hardshrink": (F.hardshrink, _options(("lambd", [0.5, 0.25, 1.0]))),
    "threshold": (F.threshold, _options(("threshold", [0.0, 0.5, -1.0]), ("value", [0.0, 2.0, -0.5]))),
    "softmax": (F.softmax, []),
    "log_softmax": (F.log_softmax, []),
    "softmin": (F.softmin, []),
}
DEFAULTS = {"threshold": {"threshold": 0.0, "value": 0.0}}
"""Options F.threshold has no default for (the language's defaults)."""
ALONG_DIM = {"softmax", "log_softmax", "softmin"}


def call_source(name: str, arguments: list[str], options: list[tuple[str, Any]], positional: bool) -> str:
    written = [*arguments, *(repr(value) if positional else f"{key}={value!r}" for key, value in options)]
    return f"{name}({', '.join(written)})"


def draw_options(draw: st.DrawFn, table: list[tuple[str, list[Any]]]) -> tuple[list[tuple[str, Any]], bool]:
    """Some options with values, and whether to write them positionally (only as a prefix)."""
    chosen = [(key, draw(st.sampled_from(values))) for key, values in table if draw(st.booleans())]
    prefix = [key for key, _ in chosen] == [key for key, _ in table[: len(chosen)]]
    return chosen, prefix and draw(st.booleans())


def activation(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    names = [name for name in GENERATED_ACTIVATIONS if shape or name not in ALONG_DIM]
    name = draw(st.sampled_from(names))
    fn, table = GENERATED_ACTIVATIONS[name]
    argument = sub(shape)
    if name in ALONG_DIM:
        dim = draw(st.sampled_from([*range(-len(shape), len(shape)), None]))
        options: list[tuple[str, Any]] = [] if dim is None else [("dim", dim)]
        positional = dim is not None and draw(st.booleans())
        params = {"dim": -1 if dim is None else dim}
    else:
        options, positional = draw_options(draw, table)
        params = {**DEFAULTS.get(name, {}), **dict(options)}
    return Formula(
        call_source(name, [argument.source], options, positional), lambda v: fn(argument.fn(v), **params), shape
    )


GENERATED_LOSSES: dict[str, tuple[Callable[..., torch.Tensor], list[tuple[str, list[Any]]]]] = {
    "mse": (F.mse_loss, []),
    "l1": (F.l1_loss, []),
    "smooth_l1": (F.smooth_l1_loss, _options(("beta", [1.0, 0.5, 2.0]))),
    "huber": (F.huber_loss, _options(("delta", [1.0, 0.5, 2.0]))),
}


def loss(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    name = draw(st.sampled_from(list(GENERATED_LOSSES)))
    fn, table = GENERATED_LOSSES[name]
    operand_shape = shape if shape else draw(st.sampled_from(SHAPES))
    reduction = "none" if shape else draw(st.sampled_from(["mean", "sum", None]))
    input, target = sub(operand_shape), sub(operand_shape)
    extra, _ = draw_options(draw, table)
    options = ([] if reduction is None else [("reduction", reduction)]) + extra
    params = {"reduction": reduction or "mean", **dict(extra)}
    positional = draw(st.booleans()) and (not extra or reduction is not None)
    return Formula(
        call_source(name, [input.source, target.source], options, positional),
        lambda v: fn(input.fn(v), target.fn(v), **params),
        shape,
    )


def extremes(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    name = draw(st.sampled_from(["maximum", "minimum"]))
    fn = torch.maximum if name == "maximum" else torch.minimum
    a_shape, b_shape = two_shapes(draw, shape)
    a, b = sub(a_shape), sub(b_shape)
    return Formula(f"{name}({a.source}, {b.source})", lambda v: fn(a.fn(v), b.fn(v)), shape)


def comparison(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    """A boolean formula whose shape broadcasts into ``shape``."""
    op = draw(st.sampled_from(list(COMPARISONS)))
    fn = COMPARISONS[op]
    left_shape, right_shape = draw(st.sampled_from(PARTNERS[shape])), draw(st.sampled_from(PARTNERS[shape]))
    left, right = sub(left_shape), sub(right_shape)
    return Formula(
        f"{left.operand()} {op} {right.operand()}",
        lambda v: fn(left.fn(v), right.fn(v)),
        broadcast(left_shape, right_shape) or (),
        "op",
    )


def where(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    condition = comparison(draw, shape, sub)
    if draw(st.booleans()):  # a comparison used as a number: its mask times a formula
        a = sub(shape)
        return Formula(f"{condition.operand()} * {a.operand()}", lambda v: condition.fn(v) * a.fn(v), shape, "op")
    a_shape, b_shape = two_shapes(draw, shape)
    a, b = sub(a_shape), sub(b_shape)
    return Formula(
        f"where({condition.source}, {a.source}, {b.source})",
        lambda v: torch.where(condition.fn(v), a.fn(v), b.fn(v)),
        shape,
    )


def clamp(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    low = draw(st.sampled_from([None, -1.0, -0.5, 0.0]))
    high = draw(st.sampled_from([None, 0.5, 1.0, 2.0] if low is not None else [0.5, 1.0, 2.0]))
    argument = sub(shape)
    form = draw(st.sampled_from(["keyword", "positional"]))
    if form == "positional":
        written = [argument.source, repr(low)] + ([] if high is None else [repr(high)])
    else:
        written = [argument.source] + [
            f"{key}={value!r}" for key, value in (("min", low), ("max", high)) if value is not None
        ]
    return Formula(f"clamp({', '.join(written)})", lambda v: torch.clamp(argument.fn(v), min=low, max=high), shape)


def _reductions() -> dict[Shape, list[tuple[Shape, int, bool]]]:
    """For each shape, the (source shape, dim, keepdim) reductions along a dim that make it."""
    found: dict[Shape, list[tuple[Shape, int, bool]]] = {s: [] for s in SHAPES}
    for source in SHAPES:
        for dim in range(len(source)):
            for keepdim in (False, True):
                result = source[:dim] + ((1,) if keepdim else ()) + source[dim + 1 :]
                if result in found:
                    for written in (dim, dim - len(source)):
                        found[result].append((source, written, keepdim))
    return found


REDUCTIONS = _reductions()


REDUCERS: dict[str, Callable[..., Any]] = {
    "sum": torch.sum,
    "mean": torch.mean,
    "prod": torch.prod,
    "max": torch.max,
    "min": torch.min,
}


def _reduce_torch(name: str, t: torch.Tensor, dim: int | None, keepdim: bool, p: float) -> torch.Tensor:
    if name == "norm":
        return norm(t, p, dim, keepdim)
    if name == "logsumexp":
        return torch.logsumexp(t, dim=-1 if dim is None else dim, keepdim=keepdim)
    op = REDUCERS[name]
    if dim is None:
        whole: torch.Tensor = op(t)
        return whole
    along = op(t, dim=dim, keepdim=keepdim)
    result: torch.Tensor = along.values if name in ("max", "min") else along
    return result


def reduction(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    name = draw(st.sampled_from(["sum", "mean", "prod", "max", "min", "norm", "logsumexp"]))
    choices: list[tuple[Shape, int | None, bool]] = list(REDUCTIONS[shape])
    if shape == () and name != "logsumexp":
        choices += [(s, None, False) for s in SHAPES]
    source_shape, dim, keepdim = draw(st.sampled_from(choices))
    argument = sub(source_shape)
    p = draw(st.sampled_from([2.0, 1.0, 3.0, 1.5, 4.0, float("inf")]))
    pairs: list[tuple[str, Any]] = []
    if name == "norm" and (p != 2.0 or draw(st.booleans())):
        pairs.append(("p", "1e999" if p == float("inf") else repr(p)))
    omit_dim = name == "logsumexp" and dim in (-1, len(source_shape) - 1) and draw(st.booleans())
    if dim is not None and not omit_dim:
        pairs.append(("dim", repr(dim)))
    if keepdim or draw(st.booleans()):
        pairs.append(("keepdim", repr(keepdim)))
    expected_order = ["p", "dim", "keepdim"] if name == "norm" else ["dim", "keepdim"]
    positional = [key for key, _ in pairs] == expected_order[: len(pairs)] and draw(st.booleans())
    written = [argument.source] + [value if positional else f"{key}={value}" for key, value in pairs]
    return Formula(
        f"{name}({', '.join(written)})", lambda v: _reduce_torch(name, argument.fn(v), dim, keepdim, p), shape
    )


def matmul(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    pairs: list[tuple[Shape, Shape]] = []
    for n in (1, 2, 3):
        if shape == ():
            pairs.append(((n,), (n,)))
        elif len(shape) == 1:
            pairs += [((n,), (n, shape[0])), ((shape[0], n), (n,))]
        else:
            pairs.append(((shape[0], n), (n, shape[1])))
    pairs = [(a, b) for a, b in pairs if a in SHAPES and b in SHAPES]
    a_shape, b_shape = draw(st.sampled_from(pairs))
    a, b = sub(a_shape), sub(b_shape)
    form = draw(st.sampled_from(["@", "matmul", "dot"] if shape == () else ["@", "matmul"]))
    if form == "@":
        return Formula(f"{a.operand()} @ {b.operand()}", lambda v: torch.matmul(a.fn(v), b.fn(v)), shape, "op")
    fn = torch.dot if form == "dot" else torch.matmul
    return Formula(f"{form}({a.source}, {b.source})", lambda v: fn(a.fn(v), b.fn(v)), shape)


def batched_matmul(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    """(2, 1, 3) @ (3, 3) or (3, 3) @ (2, 3, 1), reshaped to a shape of 6 elements."""
    a, b = sub(draw(st.sampled_from([(2, 3), (3, 2)]))), sub((3, 3))
    dims = ", ".join(str(size) for size in shape)
    if draw(st.booleans()):
        return Formula(
            f"reshape(reshape({a.source}, 2, 1, 3) @ {b.operand()}, {dims})",
            lambda v: torch.matmul(a.fn(v).reshape(2, 1, 3), b.fn(v)).reshape(shape),
            shape,
        )
    return Formula(
        f"reshape(matmul({b.source}, reshape({a.source}, 2, 3, 1)), {dims})",
        lambda v: torch.matmul(b.fn(v), a.fn(v).reshape(2, 3, 1)).reshape(shape),
        shape,
    )


def transpose(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    forms = ["T", "default", "positional", "keyword"] if len(shape) == 2 else ["T", "positional"] if shape else ["T"]
    form = draw(st.sampled_from(forms))
    if form == "T":
        argument = sub(tuple(reversed(shape)))
        return Formula(
            f"{argument.postfix()}.T", lambda v: argument.fn(v).permute(tuple(reversed(range(len(shape))))), shape
        )
    if form == "default":
        argument = sub(tuple(reversed(shape)))
        return Formula(f"transpose({argument.source})", lambda v: torch.transpose(argument.fn(v), 0, 1), shape)
    dims = [0, -1] if len(shape) == 1 else [0, 1, -1, -2]
    dim0, dim1 = draw(st.sampled_from(dims)), draw(st.sampled_from(dims))
    swapped = dim0 % len(shape) != dim1 % len(shape)
    argument = sub(tuple(reversed(shape)) if swapped else shape)
    if form == "positional":
        text = f"transpose({argument.source}, {dim0}, {dim1})"
    else:
        text = f"transpose({argument.source}, dim1={dim1}, dim0={dim0})"
    return Formula(text, lambda v: torch.transpose(argument.fn(v), dim0, dim1), shape)


def reshape(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    argument = sub(draw(st.sampled_from([s for s in SHAPES if numel(s) == numel(shape)])))
    dims: list[int] = list(shape)
    if len(dims) > 0 and draw(st.booleans()):
        dims[draw(st.integers(0, len(dims) - 1))] = -1
    text = "".join(f", {size}" for size in dims)
    return Formula(f"reshape({argument.source}{text})", lambda v: argument.fn(v).reshape(dims), shape)


def _axis_indexes(size: int) -> list[tuple[str, Any]]:
    indexes: list[tuple[str, Any]] = [(str(i), i) for i in range(-size, size)]
    for start, stop, step in itertools.product((None, 0, 1, -1, -2), (None, 1, 2, -1), (None, 1, 2)):
        if len(range(size)[slice(start, stop, step)]) > 0:
            text = "" if start is None else str(start)
            text += ":" + ("" if stop is None else str(stop))
            text += "" if step is None else f":{step}"
            indexes.append((text, slice(start, stop, step)))
    return indexes


def _indexings() -> dict[Shape, list[tuple[Shape, str, Any]]]:
    """For each shape, (source shape, index text, index) of static indexings that make it."""
    found: dict[Shape, list[tuple[Shape, str, Any]]] = {s: [] for s in SHAPES}
    for source in SHAPES:
        forms: list[tuple[str, Any]] = [("...", Ellipsis)]
        if len(source) >= 1:
            first = _axis_indexes(source[0])
            last = _axis_indexes(source[-1])
            forms += first + [(f"{t}, ...", (i, Ellipsis)) for t, i in first[::3]]
            forms += [(f"..., {t}", (Ellipsis, i)) for t, i in last]
        if len(source) == 2:
            forms += [(f"{a}, {b}", (i, j)) for (a, i), (b, j) in itertools.product(first[::2], last[::2])]
        dummy = torch.empty(source)
        for text, index in forms:
            shape = tuple(dummy[index].shape)
            if shape in found:
                found[shape].append((source, text, index))
    return found


INDEXINGS = _indexings()


def index(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    source_shape, text, key = draw(st.sampled_from(INDEXINGS[shape]))
    argument = sub(source_shape)
    return Formula(f"{argument.postfix()}[{text}]", lambda v: argument.fn(v)[key], shape)


def like(draw: st.DrawFn, shape: Shape, sub: Sub) -> Formula:
    name = draw(st.sampled_from(["ones_like", "zeros_like"]))
    fn = torch.ones_like if name == "ones_like" else torch.zeros_like
    argument = sub(shape)
    return Formula(f"{name}({argument.source})", lambda v: fn(argument.fn(v)), shape)


Production = Callable[[st.DrawFn, Shape, Sub], Formula]
PRODUCTIONS: dict[str, tuple[Production, Callable[[Shape], bool]]] = {
    "negate": (negate, lambda shape: True),
    "arithmetic": (arithmetic, lambda shape: True),
    "power": (power, lambda shape: True),
    "elementwise": (elementwise, lambda shape: True),
    "activation": (activation, lambda shape: True),
    "loss": (loss, lambda shape: True),
    "extremes": (extremes, lambda shape: True),
    "where": (where, lambda shape: True),
    "clamp": (clamp, lambda shape: True),
    "reduction": (reduction, lambda shape: bool(REDUCTIONS[shape]) or shape == ()),
    "matmul": (matmul, lambda shape: True),
    "batched_matmul": (batched_matmul, lambda shape: numel(shape) == 6),
    "transpose": (transpose, lambda shape: True),
    "reshape": (reshape, lambda shape: True),
    "index": (index, lambda shape: bool(INDEXINGS[shape])),
    "like": (like, lambda shape: True),
}


@st.composite
def formulas(draw: st.DrawFn, shape: Shape, depth: int, scope: Scope, leaf_ok: bool = True) -> Formula:
    if depth <= 0 or (leaf_ok and draw(st.integers(0, 3)) == 0):
        return leaf(draw, shape, scope)
    name = draw(st.sampled_from([name for name, (_, fits) in PRODUCTIONS.items() if fits(shape)]))
    event(name)
    production = PRODUCTIONS[name][0]
    return production(draw, shape, lambda s: draw(formulas(s, depth - 1, scope)))


@dataclass(frozen=True)
class Program:
    source: str
    fn: Callable[[Env], torch.Tensor]
    shape: Shape


@st.composite
def programs(draw: st.DrawFn, scalar: bool) -> Program:
    """``name = expr`` lines (each may read the ones before), then the final expression."""
    scope: Scope = tuple(GENERATED_INPUTS.items())
    lines: list[tuple[str, Formula]] = []
    for number in range(draw(st.integers(0, 2))):
        formula = draw(formulas(draw(st.sampled_from(SHAPES)), 2, scope, leaf_ok=False))
        lines.append((f"t{number}", formula))
        scope += ((f"t{number}", formula.shape),)
    final = draw(formulas(() if scalar else draw(st.sampled_from(SHAPES)), 3, scope, leaf_ok=False))

    def fn(v: Env) -> torch.Tensor:
        env = dict(v)
        for name, formula in lines:
            env[name] = formula.fn(env)
        return final.fn(env)

    source = "\n".join([*(f"{name} = {formula.source}" for name, formula in lines), final.source])
    return Program(source, fn, final.shape)


def generated_inputs(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(shape, generator=generator, dtype=F64) * 4 - 2 for name, shape in GENERATED_INPUTS.items()}


def scaled(tolerance: float, expected: torch.Tensor) -> dict[str, Any]:
    """``tolerance`` relative to each entry and to the largest one (cancellation in sums)."""
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return {"rtol": tolerance, "atol": tolerance * max(1.0, scale)}


def finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


GENERATED_TOLERANCE = 1e-10


def test_the_generator_covers_the_whole_vocabulary() -> None:
    generated = set(ELEMENTWISE) | set(GENERATED_ACTIVATIONS) | set(GENERATED_LOSSES)
    generated |= set(REDUCERS) | {"norm", "logsumexp", "maximum", "minimum", "where", "clamp"}
    generated |= {"matmul", "dot", "transpose", "reshape", "ones_like", "zeros_like"}
    assert language_names("math") | language_names("activation") <= generated
    assert generated <= set(FUNCTIONS)


@settings(max_examples=examples(60))
@given(programs(scalar=True), st.integers(0, 2**32 - 1))
def test_random_scalar_formulas_equal_independent_torch(program: Program, seed: int) -> None:
    """Value, gradient and Hessian (not for ``hardsigmoid``, whose Hessian torch lacks and whose
    derivative is a float32 one: see above)."""
    inputs = generated_inputs(seed)
    names = list(inputs)
    xs = tuple(inputs.values())
    argnums = tuple(range(len(xs)))

    def fn(*values: torch.Tensor) -> torch.Tensor:
        return program.fn(dict(zip(names, values, strict=True)))

    value = fn(*xs)
    grads = torch.func.grad(fn, argnums=argnums)(*xs)
    uses_hardsigmoid = "hardsigmoid" in program.source
    hessians = None if uses_hardsigmoid else torch.func.jacrev(torch.func.jacrev(fn, argnums), argnums)(*xs)
    assume(finite(value, *grads, *(block for row in hessians or () for block in row)))
    compiled = compile_program(program.source, frozenset(inputs), F64, CPU, LIMITS)
    wanted: list[Derivative] = ["grad"] if uses_hardsigmoid else ["grad", "hessian"]
    result = differentiate(compiled, inputs, None, wanted, max_entries=10**6)
    assert result.grad is not None
    tolerance = 1e-7 if uses_hardsigmoid else GENERATED_TOLERANCE
    torch.testing.assert_close(result.value, value, **scaled(GENERATED_TOLERANCE, value))
    for name, grad in zip(names, grads, strict=True):
        torch.testing.assert_close(result.grad[name], grad, **scaled(tolerance, grad))
    if hessians is not None:
        assert result.hessian is not None
        for i, row in enumerate(names):
            for j, column in enumerate(names):
                expected = hessians[i][j]
                torch.testing.assert_close(result.hessian[row][column], expected, **scaled(tolerance, expected))


@settings(max_examples=examples(40))
@given(programs(scalar=False), st.integers(0, 2**32 - 1))
def test_random_formulas_of_any_shape_equal_independent_torch(program: Program, seed: int) -> None:
    """Value, the vector-Jacobian product with a random cotangent, and the Jacobian."""
    inputs = generated_inputs(seed)
    names = list(inputs)
    xs = tuple(inputs.values())
    argnums = tuple(range(len(xs)))

    def fn(*values: torch.Tensor) -> torch.Tensor:
        return program.fn(dict(zip(names, values, strict=True)))

    value, vjp = torch.func.vjp(fn, *xs)[:2]
    g = cotangent(value.shape, seed % 1000)
    vjps = vjp(g)
    jacobians = torch.func.jacrev(fn, argnums=argnums)(*xs)
    assume(finite(value, *vjps, *jacobians))
    compiled = compile_program(program.source, frozenset(inputs), F64, CPU, LIMITS)
    result = differentiate(compiled, inputs, None, ["grad", "jacobian"], grad_output=g, max_entries=10**6)
    assert result.grad is not None and result.jacobian is not None
    tolerance = 1e-7 if "hardsigmoid" in program.source else GENERATED_TOLERANCE
    assert result.value.shape == program.shape
    torch.testing.assert_close(result.value, value, **scaled(GENERATED_TOLERANCE, value))
    for i, name in enumerate(names):
        torch.testing.assert_close(result.grad[name], vjps[i], **scaled(tolerance, vjps[i]))
        torch.testing.assert_close(result.jacobian[name], jacobians[i], **scaled(tolerance, jacobians[i]))


# --- Issue 14: the names and signatures a client writes and reads (GET /v1/functions), spelled out.


@pytest.mark.parametrize(
    ("name", "signature"),
    [
        ("sum", "sum(x: tensor, dim: optional_int = None, keepdim: bool = False)"),
        ("gelu", "gelu(x: tensor, approximate: str in none|tanh = 'none')"),
        ("reshape", "reshape(x: tensor, *shape: int)"),
        ("minimum", "minimum(a: tensor, b: tensor)"),
        ("dot", "dot(a: tensor, b: tensor)"),
        ("clamp", "clamp(x: tensor, min: optional_float = None, max: optional_float = None)"),
        ("hardtanh", "hardtanh(x: tensor, min_val: float = -1.0, max_val: float = 1.0)"),
        ("exp", "exp(x: tensor)"),
    ],
)
def test_signatures_as_the_catalog_shows_them(name: str, signature: str) -> None:
    assert FUNCTIONS[name].signature() == signature


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("minimum(a=x, b=y)", lambda x, y: torch.minimum(x, y)),
        ("minimum(b=y, a=x)", lambda x, y: torch.minimum(x, y)),
        ("maximum(b=y, a=x)", lambda x, y: torch.maximum(x, y)),
        ("dot(a=x, b=y)", lambda x, y: torch.dot(x, y)),
        ("dot(b=y, a=x)", lambda x, y: torch.dot(x, y)),
        ("exp(x=y)", lambda x, y: torch.exp(y)),
        ("sum(x=y, dim=0)", lambda x, y: torch.sum(y, dim=0)),
        ("reshape(x, 3, 1)", lambda x, y: x.reshape(3, 1)),
    ],
)
def test_tensor_arguments_by_their_keyword_names(
    source: str, expected: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> None:
    inputs = {"x": torch.tensor([1.0, -2.0, 3.0], dtype=F64), "y": torch.tensor([0.5, 4.0, -1.0], dtype=F64)}
    program = compile_program(source, frozenset(inputs), F64, CPU, LIMITS)
    value = differentiate(program, inputs, None, [], max_entries=10**6).value
    torch.testing.assert_close(value, expected(inputs["x"], inputs["y"]), rtol=0, atol=0)


def test_a_wrong_keyword_is_refused_with_the_signature() -> None:
    inputs = {"x": torch.ones(2, dtype=F64)}
    with pytest.raises(InvalidInput, match=r"minimum has no argument 'c': minimum\(a: tensor, b: tensor\)"):
        compile_program("minimum(a=x, c=x)", frozenset(inputs), F64, CPU, LIMITS)
