"""The expression language: the seed's examples as its text writes them, Hessians against
analytic ones, gradients against finite differences, every function of the vocabulary, and a
corpus of refused expressions plus a fuzzer: nothing but a clean refusal, ever."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.compute.activations import ACTIVATIONS
from service.compute.differentiate import Derivatives, differentiate
from service.compute.expressions import Limits, compile_program
from service.compute.functions import FUNCTIONS
from service.compute.losses import LOSSES
from service.compute.runtime import torch_errors
from service.errors import InvalidInput, LimitExceeded, Overloaded, ServiceError
from tests.compute.test_losses import make_inputs

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


FD_EXPRESSIONS = [
    "sum(sin(x) * cos(y) + x ** 3 / (1 + y ** 2))",
    "logsumexp(x, dim=0) + norm(y, p=3)",
    "h = tanh(x @ W)\nmean(softplus(h, beta=2)) + max(y)",
    "sum(where(x > 0, x * y, -x)) + prod(clamp(y, min=-1, max=1))",
    "cross_entropy(reshape(x, 1, 3), t) + kl_div(log_softmax(y, dim=0), softmax(x, dim=0))",
    "sum(transpose(W, 0, 1)[1:, ...] ** 2) + W.T[0, 0] + sqrt(abs(x) + 1)[-1]",
]


@pytest.mark.parametrize("source", FD_EXPRESSIONS)
def test_gradients_match_finite_differences(source: str) -> None:
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
    assert result.grad is not None

    def fn(*tensors: torch.Tensor) -> torch.Tensor:
        return program({**values, **constants, **dict(zip(names, tensors, strict=True))})

    leaves = tuple(values[name].clone().requires_grad_(True) for name in names)
    assert torch.autograd.gradcheck(fn, leaves)
    analytic = torch.autograd.grad(fn(*leaves), leaves)
    for name, expected in zip(names, analytic, strict=True):
        torch.testing.assert_close(result.grad[name], expected)


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
    x = torch.linspace(-3, 3, 7, dtype=F64)
    result = run(f"{spec.name}(x)", x=x)
    assert torch.equal(result.value, spec.fn(x, **spec.defaults()))


@pytest.mark.parametrize("spec", list(LOSSES), ids=lambda spec: spec.name)
def test_every_loss_is_a_function(spec: Any) -> None:
    sample = spec.samples[0]
    input, target, _, _ = make_inputs(spec, sample)
    arguments = ["input"] + (["target"] if target is not None else [])
    tensors: dict[str, Any] = {"input": input, **({"target": target} if target is not None else {})}
    result = run(f"{spec.name}({', '.join(arguments)})", wrt=["input"], **tensors)
    expected = spec.fn(input, target, None, **spec.defaults())
    torch.testing.assert_close(result.value, expected, rtol=1e-14, atol=1e-14)


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
    "1",
    "2.5",
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
    "sum",
    "softmax",
    "dim=",
    "0",
    "<",
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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=60), st.lists(st.sampled_from(TOKENS), max_size=25).map("".join)))
def test_fuzzed_sources_compile_run_or_are_refused_cleanly(source: str) -> None:
    inputs = {"x": torch.tensor([0.5, -1.5], dtype=F64), "y": torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64)}
    outcome = "computed"
    try:
        program = compile_program(source, frozenset(inputs), F64, CPU, LIMITS)
        differentiate(program, inputs, None, ["grad"], max_entries=10_000)
    except ServiceError as error:
        outcome = error.message
    assert outcome


def test_cpu_out_of_memory_is_a_503_not_a_400() -> None:
    with pytest.raises(Overloaded) as caught, torch_errors("a test"):
        torch.empty(2**40, dtype=torch.float64)  # 8 TiB
    assert caught.value.error_type == "out_of_memory"
