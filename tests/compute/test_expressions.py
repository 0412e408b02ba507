"""The expression language: the seed's examples as its text writes them, Hessians against
analytic ones, gradients against finite differences, every function of the vocabulary, and a
corpus of refused expressions plus a fuzzer: nothing but a clean refusal, ever."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service.compute.expressions.differentiate import Derivative, Derivatives, differentiate
from service.compute.expressions.language import Limits, compile_program
from service.compute.ops.activations import ACTIVATIONS
from service.compute.ops.functions import FUNCTIONS
from service.compute.ops.losses import LOSSES
from service.compute.runtime import torch_errors
from service.errors import InvalidInput, LimitExceeded, Overloaded, ServiceError, status_code_for
from tests import oracles
from tests.compute.test_losses import make_inputs
from tests.helpers import examples

F64 = torch.float64
CPU = torch.device("cpu")
LIMITS = Limits()


def run(source: str, wanted: tuple[str, ...] = ("grad",), wrt: list[str] | None = None, **inputs: Any) -> Derivatives:
    tensors = {
        name: value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=F64)
        for name, value in inputs.items()
    }
    program = compile_program(source, frozenset(tensors), F64, CPU, LIMITS)
    return differentiate(program, tensors, wrt, wanted, max_entries=1_000_000)  # type: ignore[arg-type]


def test_seed_multi_output_perceptron() -> None:
    """x = randn(1, 10); w = randn(2, 10); o = sigmoid(x @ w.t()); loss = mse_loss(ones(1, 2), o)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 10, generator=generator, dtype=F64)
    w = torch.randn(2, 10, generator=generator, dtype=F64)
    result = run("o = sigmoid(x @ w.T)\nloss = mse(ones_like(o), o)\nloss", wrt=["w"], x=x, w=w)
    leaf = w.clone().requires_grad_(True)
    o = torch.sigmoid(x @ leaf.t())
    F.mse_loss(torch.ones(1, 2, dtype=F64), o).backward()
    assert result.grad is not None
    assert leaf.grad is not None
    assert torch.equal(result.grad["w"], leaf.grad)
    assert list(result.grad) == ["w"]


def test_seed_gradient_of_one_softmax_output() -> None:
    """p = softmax(a, dim=0); autograd.grad(p[1], [a])."""
    a = torch.rand(3, generator=torch.Generator().manual_seed(1), dtype=F64)
    result = run("p = softmax(a, dim=0)\np[1]", a=a)
    leaf = a.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.softmax(leaf, dim=0)[1], [leaf])
    assert result.grad is not None
    assert torch.equal(result.grad["a"], expected)


def test_seed_mse_of_x_times_w() -> None:
    """w = full([1], 2); mse = F.mse_loss(torch.ones(1), x * w); autograd.grad(mse, [w])."""
    result = run("mse(ones_like(x * w), x * w)", wrt=["w"], x=[1.5], w=[2.0])
    assert result.grad is not None
    torch.testing.assert_close(result.grad["w"], torch.tensor([2 * (1.5 * 2 - 1) * 1.5], dtype=F64))


def test_seed_cross_entropy_identity() -> None:
    logits = torch.randn(1, 10, generator=torch.Generator().manual_seed(2), dtype=F64)
    result = run("cross_entropy(z, t) - nll(log(softmax(z, dim=1)), t)", z=logits, t=torch.tensor([3]))
    assert abs(result.value.item()) < 1e-12


HIMMELBLAU = "(x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2"


@pytest.mark.parametrize("point", [(1.0, 2.0), (3.0, 2.0), (-0.27, -0.92), (-4.0, 0.0)])
def test_himmelblau_gradient_and_hessian_are_the_analytic_ones(point: tuple[float, float]) -> None:
    x, y = point
    result = run(HIMMELBLAU, ("grad", "hessian", "jacobian"), x=list(point))
    a, b = x * x + y - 11, x + y * y - 7
    gradient = torch.tensor([4 * x * a + 2 * b, 2 * a + 4 * y * b], dtype=F64)
    hessian = torch.tensor(
        [[12 * x * x + 4 * y - 42, 4 * x + 4 * y], [4 * x + 4 * y, 12 * y * y + 4 * x - 26]], dtype=F64
    )
    assert result.grad is not None and result.jacobian is not None and result.hessian is not None
    torch.testing.assert_close(result.grad["x"], gradient)
    torch.testing.assert_close(result.jacobian["x"], gradient)
    torch.testing.assert_close(result.hessian["x"]["x"], hessian)


def test_hessian_blocks_of_a_quadratic_form() -> None:
    """f = x^T A x + (b . x) sum(b): H_xx = A + A^T, H_xb[i, j] = sum(b) delta_ij + b_i."""
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(3, 3, generator=generator, dtype=F64)
    b = torch.randn(3, generator=generator, dtype=F64)
    x = torch.randn(3, generator=generator, dtype=F64)
    result = run("x @ A @ x + dot(b, x) * sum(b)", ("hessian",), wrt=["x", "b"], x=x, A=a, b=b)
    assert result.hessian is not None
    eye = torch.eye(3, dtype=F64)
    torch.testing.assert_close(result.hessian["x"]["x"], a + a.T)
    torch.testing.assert_close(result.hessian["x"]["b"], b.sum() * eye + torch.outer(b, torch.ones(3, dtype=F64)))
    torch.testing.assert_close(result.hessian["b"]["x"], result.hessian["x"]["b"].T)


def test_hessian_of_sum_exp_is_diagonal() -> None:
    x = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    result = run("sum(exp(x))", ("hessian",), x=x)
    assert result.hessian is not None
    torch.testing.assert_close(result.hessian["x"]["x"], torch.diag(torch.exp(x)))


Values = dict[str, torch.Tensor]


def _fd_cross_entropy_kl(v: Values) -> torch.Tensor:
    cross_entropy = F.cross_entropy(v["x"].reshape(1, 3), v["t"])
    kl = F.kl_div(F.log_softmax(v["y"], dim=0), F.softmax(v["x"], dim=0), reduction="batchmean")
    return cross_entropy + kl


FD_EXPRESSIONS: list[tuple[str, Callable[[Values], torch.Tensor]]] = [
    (
        "sum(sin(x) * cos(y) + x ** 3 / (1 + y ** 2))",
        lambda v: torch.sum(torch.sin(v["x"]) * torch.cos(v["y"]) + v["x"] ** 3 / (1 + v["y"] ** 2)),
    ),
    (
        "logsumexp(x, dim=0) + norm(y, p=3)",
        lambda v: torch.logsumexp(v["x"], dim=0) + torch.linalg.vector_norm(v["y"], ord=3),
    ),
    (
        "h = tanh(x @ W)\nmean(softplus(h, beta=2)) + max(y)",
        lambda v: torch.mean(F.softplus(torch.tanh(v["x"] @ v["W"]), beta=2)) + torch.max(v["y"]),
    ),
    (
        "sum(where(x > 0, x * y, -x)) + prod(clamp(y, min=-1, max=1))",
        lambda v: torch.sum(torch.where(v["x"] > 0, v["x"] * v["y"], -v["x"])) + torch.prod(v["y"].clamp(-1, 1)),
    ),
    (
        "cross_entropy(reshape(x, 1, 3), t) + kl_div(log_softmax(y, dim=0), softmax(x, dim=0))",
        _fd_cross_entropy_kl,
    ),
    (
        "sum(transpose(W, 0, 1)[1:, ...] ** 2) + W.T[0, 0] + sqrt(abs(x) + 1)[-1]",
        lambda v: torch.sum(v["W"].t()[1:] ** 2) + v["W"][0, 0] + torch.sqrt(v["x"].abs() + 1)[-1],
    ),
]
# Central differences with step h in float64: rounding ~1e-16 |f| / h plus truncation ~h^2 times the third derivative,
# about 1e-10 here; 1e-7 leaves room for that and nothing more (1e-5 would pass wrong answers).
FD_STEP = 1e-6
FD_TOLERANCE: dict[str, Any] = {"rtol": 1e-7, "atol": 1e-7}


def central_differences(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """d fn / d x by central differences: shape ``fn(x).shape + x.shape``."""
    columns = []
    for i in range(x.numel()):
        step = torch.zeros(x.numel(), dtype=x.dtype)
        step[i] = FD_STEP
        step = step.reshape(x.shape)
        columns.append((fn(x + step) - fn(x - step)) / (2 * FD_STEP))
    return torch.stack(columns, dim=-1).reshape(*columns[0].shape, *x.shape)


@pytest.mark.parametrize(("source", "expected"), FD_EXPRESSIONS, ids=[source for source, _ in FD_EXPRESSIONS])
def test_derivatives_equal_independent_torch_and_finite_differences(
    source: str, expected: Callable[[Values], torch.Tensor]
) -> None:
    """Value, gradient and Hessian against the formula written in torch: autograd through it
    (tightly), and central differences of its value (gradient) and of its gradient (Hessian)."""
    generator = torch.Generator().manual_seed(4)
    values = {
        "x": torch.randn(3, generator=generator, dtype=F64),
        "y": torch.randn(3, generator=generator, dtype=F64),
        "W": torch.randn(3, 3, generator=generator, dtype=F64),
    }
    constants = {"t": torch.tensor([2])}
    program = compile_program(source, frozenset({*values, *constants}), F64, CPU, LIMITS)
    names = sorted(program.names - set(constants))
    result = differentiate(program, {**values, **constants}, names, ["grad", "hessian"], max_entries=10_000)
    assert result.grad is not None and result.hessian is not None

    def fn(*tensors: torch.Tensor) -> torch.Tensor:
        return expected({**values, **constants, **dict(zip(names, tensors, strict=True))})

    xs = tuple(values[name] for name in names)
    argnums = tuple(range(len(names)))
    torch.testing.assert_close(result.value, fn(*xs), rtol=1e-12, atol=1e-12)
    grads = torch.func.grad(fn, argnums=argnums)(*xs)
    hessians = torch.func.jacrev(torch.func.grad(fn, argnums=argnums), argnums=argnums)(*xs)
    for i, name in enumerate(names):
        torch.testing.assert_close(result.grad[name], grads[i], rtol=1e-12, atol=1e-12)

        def value_along(x: torch.Tensor, i: int = i) -> torch.Tensor:
            return fn(*xs[:i], x, *xs[i + 1 :])

        torch.testing.assert_close(result.grad[name], central_differences(value_along, xs[i]), **FD_TOLERANCE)
        for j, other in enumerate(names):
            torch.testing.assert_close(result.hessian[name][other], hessians[i][j], rtol=1e-12, atol=1e-12)

            def gradient_along(x: torch.Tensor, i: int = i, j: int = j) -> torch.Tensor:
                at = (*xs[:j], x, *xs[j + 1 :])
                gradient: torch.Tensor = torch.func.grad(fn, argnums=i)(*at)
                return gradient

            finite = central_differences(gradient_along, xs[j])
            torch.testing.assert_close(result.hessian[name][other], finite, **FD_TOLERANCE)


def test_non_scalar_grad_is_the_vjp_with_grad_output() -> None:
    x = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    g = torch.tensor([1.0, -1.0, 0.5], dtype=F64)
    program = compile_program("x ** 2", frozenset({"x"}), F64, CPU, LIMITS)
    result = differentiate(program, {"x": x}, None, ["grad", "jacobian"], grad_output=g, max_entries=100)
    assert result.grad is not None and result.jacobian is not None
    torch.testing.assert_close(result.grad["x"], 2 * x * g)
    torch.testing.assert_close(result.jacobian["x"], torch.diag(2 * x))


@pytest.mark.parametrize("spec", list(ACTIVATIONS), ids=lambda spec: spec.name)
def test_every_activation_is_a_function(spec: Any) -> None:
    """Called with no options, each equals its hand-written reference (tests/oracles.py) with the
    reference's own defaults; tests/compute/test_language.py covers the options."""
    x = torch.linspace(-3.9, 3.7, 7, dtype=F64)
    result = run(f"{spec.name}(x)", x=x)
    torch.testing.assert_close(result.value, oracles.ACTIVATIONS[spec.name](x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", list(LOSSES), ids=lambda spec: spec.name)
def test_every_loss_is_a_function(spec: Any) -> None:
    sample = spec.samples[0]
    input, target, _, _ = make_inputs(spec, sample)
    arguments = ["input"] + (["target"] if target is not None else [])
    tensors: dict[str, Any] = {"input": input, **({"target": target} if target is not None else {})}
    result = run(f"{spec.name}({', '.join(arguments)})", wrt=["input"], **tensors)
    expected = oracles.LOSSES[spec.name](input, target, None)
    torch.testing.assert_close(result.value, expected, rtol=1e-12, atol=1e-12)


def test_every_function_is_listed_with_a_signature() -> None:
    assert {spec.name for spec in ACTIVATIONS} <= set(FUNCTIONS)
    assert {spec.name for spec in LOSSES} <= set(FUNCTIONS)
    contract = "exp log log2 log10 log1p sqrt abs sin cos tan sinh cosh tanh sum mean prod max min norm logsumexp"
    contract += " softmax log_softmax matmul dot transpose reshape ones_like zeros_like clamp where"
    assert set(contract.split()) <= set(FUNCTIONS)
    for function in FUNCTIONS.values():
        assert function.signature().startswith(f"{function.name}(")
        assert function.doc


REFUSED = [
    "__import__('os').system('ls')",
    "x.__class__.__mro__",
    "().__class__.__bases__[0].__subclasses__()",
    "x.T.__dict__",
    "exp.__globals__",
    "open('/etc/passwd')",
    "eval('1')",
    "exec('1')",
    "compile('1', 'f', 'eval')",
    "getattr(x, 'T')",
    "globals()",
    "lambda: 1",
    "(lambda x: x)(1)",
    "[i for i in x]",
    "{i: i for i in x}",
    "sum(i for i in x)",
    "'string'",
    "f'{x}'",
    "b'bytes'",
    "(y := x)",
    "import os",
    "from os import system",
    "x = 1",
    "del x",
    "assert x",
    "def f(): pass",
    "class A: pass",
    "for i in x: pass",
    "while True: pass",
    "with x: pass",
    "try:\n  x\nexcept: pass",
    "global x",
    "x if x else x",
    "x and x",
    "not x",
    "~x",
    "x // 2",
    "x % 2",
    "x << 1",
    "[x, x]",
    "(x, x)",
    "{x}",
    "{'a': x}",
    "x[x]",
    "x[0.5]",
    "exp(*x)",
    "exp(**x)",
    "exp(x, x)",
    "sum(x, dim=y)",
    "reshape(x, 2.5)",
    "1 < x < 2",
    "x is x",
    "x in x",
    "await x",
    "yield x",
    "...",
    "None",
    "True",
    "exp",
    "undefined_name",
    "x(1)",
    "x.T(1)",
    "\\",
    "x +",
    "",
    "x = exp(x)\nx",
    "exp = 1\nexp",
    "print(x)",
]


@pytest.mark.parametrize("source", REFUSED)
def test_refused_expressions_say_what_and_where(source: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        compile_program(source, frozenset({"x", "y"}), F64, CPU, LIMITS)
    assert caught.value.message
    if source.strip():
        assert "line" in caught.value.details, caught.value.message


@pytest.mark.parametrize(
    ("source", "error_type"),
    [
        ("x" + "+x" * 10_000, "expression_too_long"),
        ("x" * 2_000_000, "expression_too_long"),
        ("-" * 9_000 + "x", "expression_too_deep"),
        ("(" * 4_000 + "x" + ")" * 4_000, "expression_too_deep"),
        ("x" + "[0]" * 3_000, "expression_too_deep"),
        ("+".join(["x"] * 1_500), "expression_too_deep"),
        ("exp(" * 70 + "x" + ")" * 70, "expression_too_deep"),
        ("".join(f"a{i} = x\n" for i in range(600)) + "x", "expression_too_large"),
    ],
)
def test_limits_are_413s(source: str, error_type: str) -> None:
    with pytest.raises(LimitExceeded) as caught:
        compile_program(source, frozenset({"x"}), F64, CPU, LIMITS)
    assert caught.value.error_type == error_type


def test_huge_powers_are_float_overflow_not_big_integers() -> None:
    assert run("9 ** 9 ** 9 + x", x=1.0).value.item() == float("inf")
    assert run("2 ** 10000 - 2 ** 10000", x=1.0).value.isnan()


def test_hessian_needs_a_scalar() -> None:
    with pytest.raises(InvalidInput) as caught:
        run("x * 2", ("hessian",), x=[1.0, 2.0])
    assert caught.value.error_type == "not_scalar"


def test_jacobian_and_hessian_limits() -> None:
    program = compile_program("x * 2", frozenset({"x"}), F64, CPU, LIMITS)
    with pytest.raises(LimitExceeded):
        differentiate(program, {"x": torch.ones(100, dtype=F64)}, None, ["jacobian"], max_entries=9_999)
    program = compile_program("sum(x)", frozenset({"x"}), F64, CPU, LIMITS)
    with pytest.raises(LimitExceeded):
        differentiate(program, {"x": torch.ones(100, dtype=F64)}, None, ["hessian"], max_entries=9_999)


def test_wrt_must_name_floating_inputs() -> None:
    with pytest.raises(InvalidInput):
        run("x", wrt=["y"], x=1.0)
    with pytest.raises(InvalidInput):
        run("cross_entropy(z, t)", wrt=["t"], z=[[1.0, 2.0]], t=torch.tensor([1]))


def test_torch_errors_are_400s() -> None:
    with pytest.raises(InvalidInput) as caught:
        run("x @ y", x=[1.0, 2.0], y=[1.0, 2.0, 3.0])
    assert caught.value.error_type == "computation_failed"
    with pytest.raises(InvalidInput):
        run("x[5]", x=[1.0, 2.0])
    with pytest.raises(InvalidInput) as caught:
        run("cross_entropy(z, t)", z=[[1.0, 2.0]], t=torch.tensor([7]))
    assert caught.value.error_type == "class_index_out_of_range"


TOKENS = [
    "x",
    "y",
    "s",
    "t",
    "1",
    "2.5",
    "-1",
    "1e999",
    "+",
    "-",
    "*",
    "/",
    "**",
    "@",
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    ".T",
    " ",
    "exp",
    "log10",
    "sum",
    "max",
    "norm",
    "softmax",
    "cross_entropy",
    "reshape",
    "transpose",
    "matmul",
    "clamp",
    "dim=",
    "keepdim=True",
    "p=",
    "reduction='none'",
    "0",
    "<",
    "==",
    "where",
    "\n",
    "=",
    "z",
    "__",
    "'",
    "lambda",
    ".",
    "...",
]
OPTION_NAMES = sorted({arg.name for function in FUNCTIONS.values() for arg in function.args} | {"shape", "bogus"})
OPTION_VALUES = ["0", "1", "-1", "3", "-7", "True", "False", "2.5", "0.0", "-0.5", "None", "1e999", "-1e999", "x"]
OPTION_VALUES += ["'mean'", "'none'", "'batchmean'", "'tanh'", "'2'", "'e'", "'bogus'", "2 ** 70", "(1)"]
ATOMS = ["x", "y", "s", "t", "1", "-2", "0.5", "0", "x[0]", "y[-1, ...]", "y.T", "x[::2]", "x > 0", "y == y"]


def _call(name: str, arguments: list[str], options: list[tuple[str, str]]) -> str:
    return f"{name}({', '.join([*arguments, *(f'{key}={value}' for key, value in options)])})"


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    calls = st.builds(
        _call,
        st.sampled_from(sorted(FUNCTIONS)),
        st.lists(st.one_of(children, st.sampled_from(OPTION_VALUES)), max_size=4),
        st.lists(st.tuples(st.sampled_from(OPTION_NAMES), st.sampled_from(OPTION_VALUES)), max_size=3),
    )
    operators = st.builds(
        "({}) {} ({})".format, children, st.sampled_from(["+", "-", "*", "/", "**", "@", "<", ">="]), children
    )
    postfix = st.builds("({}){}".format, children, st.sampled_from([".T", "[0]", "[-1]", "[1:]", "[..., 0]", "[5]"]))
    return st.one_of(calls, operators, postfix)


CALLS = st.recursive(st.sampled_from(ATOMS), _extend, max_leaves=8)
"""Calls of every function with arguments and options of every kind, right or wrong."""
FUZZED_SOURCES = st.one_of(st.text(max_size=60), st.lists(st.sampled_from(TOKENS), max_size=25).map("".join), CALLS)
FUZZ_INPUTS = {
    "x": torch.tensor([0.5, -1.5], dtype=F64),
    "y": torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64),
    "s": torch.tensor(0.25, dtype=F64),
    "t": torch.tensor([1, 0]),
}


def fuzz_outcome(source: str, wanted: tuple[Derivative, ...] = ("grad",)) -> str:
    """ "computed", or the type of the 4xx ServiceError that refused ``source``; anything else
    (another exception, a ServiceError answered 5xx) is a bug and fails the caller."""
    refusal: ServiceError | None = None
    try:
        program = compile_program(source, frozenset(FUZZ_INPUTS), F64, CPU, LIMITS)
        differentiate(program, FUZZ_INPUTS, None, wanted, max_entries=10_000)
    except ServiceError as error:
        refusal = error
    if refusal is None:
        return "computed"
    status = status_code_for(refusal)
    assert 400 <= status < 500, f"{source!r}: {status} {type(refusal).__name__} {refusal.message}"
    assert refusal.message, source
    return refusal.error_type


@settings(max_examples=examples(300), suppress_health_check=[HealthCheck.too_slow])
@given(FUZZED_SOURCES, st.sampled_from([("grad",), ("grad", "jacobian"), ("hessian",)]))
def test_fuzzed_sources_compile_run_or_are_refused_cleanly(source: str, wanted: tuple[Derivative, ...]) -> None:
    event(fuzz_outcome(source, wanted))


@pytest.mark.parametrize(
    "source",
    [
        "x + 1",
        "sum(y, dim=1, keepdim=True)",
        "cross_entropy(y, t)",
        "norm(x, p=1e999) + where(x > 0, x, -x)[0]",
        "a = y @ x\nlogsumexp(a)",
    ],
)
def test_the_fuzz_harness_computes_valid_sources(source: str) -> None:
    assert fuzz_outcome(source, ("grad", "jacobian")) == "computed"


@pytest.mark.parametrize(
    ("source", "error_type"),
    [("x +", "invalid_expression"), ("x @ y @ y @ t", "computation_failed"), ("x" * 20_000, "expression_too_long")],
)
def test_the_fuzz_harness_reports_refusals(source: str, error_type: str) -> None:
    assert fuzz_outcome(source) == error_type


DTYPE_REFUSALS = [
    "(x > 0) ** (x > 0)",
    "(x > 0) @ (x > 0)",
    "log_softmax((x > 0)[-1])",
    "logsigmoid(y == y)",
    "mish(x > 0)",
    "softmax(t)",
    "mse(t, x)",
    "huber(x > 0, x)",
]
"""Booleans (comparisons) and integer inputs where a function needs floats (found by the fuzzer):
torch raises NotImplementedError about the dtype, or the loss code trips over it (a KeyError in
loss_value). Either way it is the client's input: a 4xx, not a 500."""


@pytest.mark.parametrize("source", DTYPE_REFUSALS)
def test_booleans_or_integers_where_floats_are_needed_are_client_errors(source: str) -> None:
    assert fuzz_outcome(source) != "computed"


def test_cpu_out_of_memory_is_a_503_not_a_400() -> None:
    with pytest.raises(Overloaded) as caught, torch_errors("a test"):
        torch.empty(2**40, dtype=torch.float64)  # 8 TiB
    assert caught.value.error_type == "out_of_memory"


def test_a_vjp_with_grad_output_runs_the_formula_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """One forward and one backward pass: the cotangent's shape is checked against the value
    as it is computed, not by a first pass with ones."""
    x = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    program = compile_program("sin(x) * x", frozenset({"x"}), F64, CPU, LIMITS)
    calls: list[int] = []
    original = type(program).__call__

    def counted(self: Any, inputs: Any) -> torch.Tensor:
        calls.append(1)
        return original(self, inputs)

    monkeypatch.setattr(type(program), "__call__", counted)
    grad_output = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    result = differentiate(program, {"x": x}, None, ["grad"], grad_output=grad_output, max_entries=100)
    assert len(calls) == 1
    assert result.grad is not None
    torch.testing.assert_close(result.grad["x"], grad_output * (torch.cos(x) * x + torch.sin(x)), rtol=1e-13, atol=0)
    with pytest.raises(InvalidInput) as caught:
        differentiate(program, {"x": x}, None, ["grad"], grad_output=grad_output[:2], max_entries=100)
    assert caught.value.error_type == "shape_mismatch"
