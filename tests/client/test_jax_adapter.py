"""gradient_client.jax.remote against the real service: jax.test_util.check_grads to the second
order in reverse mode, jax.grad, jax.vjp, jax.jacrev and jax.jacrev(jax.grad(f)) against the same
formulas written in local JAX, a remote formula inside a larger local graph, jax.vmap as the
service's batches, jax.jit, and how many requests each pass costs. Skipped where JAX is absent."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from gradient_client import Client, GradientError  # noqa: E402
from gradient_client.jax import RemoteFunction, ThirdOrderError, remote  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

Array = Any


@pytest.fixture(autouse=True)
def x64() -> Iterator[None]:
    """float64 throughout (restored after each test)."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


@dataclass(frozen=True)
class Case:
    """A formula with its inputs' shapes, its constants, and the same formula in local JAX."""

    id: str
    expression: str
    shapes: dict[str, tuple[int, ...]]
    local: Callable[..., Array]
    constants: dict[str, np.ndarray[Any, Any]]

    @property
    def scalar(self) -> bool:
        return self.id in {"scalar", "perceptron", "loss"}


Y = np.random.default_rng(7).random((4, 2))
T = np.array([0, 2, 1], dtype=np.int64)


def cross_entropy(logits: Array, target: np.ndarray[Any, Any]) -> Array:
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(log_p[jnp.arange(len(target)), target])


CASES = [
    Case(
        "scalar",
        "sum(a * sin(b)) + sum(a ** 3) * mean(b)",
        {"a": (3,), "b": (3,)},
        lambda a, b: jnp.sum(a * jnp.sin(b)) + jnp.sum(a**3) * jnp.mean(b),
        {},
    ),
    Case(
        "vector",
        "a * sin(b) + a ** 2 * exp(c)",
        {"a": (3,), "b": (3,), "c": ()},
        lambda a, b, c: a * jnp.sin(b) + a**2 * jnp.exp(c),
        {},
    ),
    Case(
        "matrix",
        "tanh(w @ x + b)",
        {"w": (3, 2), "x": (2,), "b": (3,)},
        lambda w, x, b: jnp.tanh(w @ x + b),
        {},
    ),
    Case(
        "perceptron",
        "o = sigmoid(x @ w.T)\nmse(o, y)",
        {"x": (4, 3), "w": (2, 3)},
        lambda x, w: jnp.mean((jax.nn.sigmoid(x @ w.T) - Y) ** 2),
        {"y": Y},
    ),
    Case(
        "loss",
        "cross_entropy(z @ w, t) + 0.1 * sum(w ** 2)",
        {"z": (3, 2), "w": (2, 3)},
        lambda z, w: cross_entropy(z @ w, T) + 0.1 * jnp.sum(w**2),
        {"t": T},
    ),
]
IDS = [case.id for case in CASES]


def inputs_of(case: Case, seed: int = 0, points: int | None = None) -> tuple[Array, ...]:
    rng = np.random.default_rng(seed)
    lead = () if points is None else (points,)
    return tuple(jnp.asarray(rng.random((*lead, *shape)) * 2 - 1) for shape in case.shapes.values())


def remote_of(client: Client, case: Case) -> RemoteFunction:
    return remote(client, case.expression, list(case.shapes), case.constants)


def close(actual: Any, expected: Any) -> None:
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-12), actual, expected)


class Requests:
    """The bodies of the requests a client sent (an httpx event hook)."""

    def __init__(self, client: Client) -> None:
        self.bodies: list[dict[str, Any]] = []
        client.http.event_hooks["request"].append(self._record)

    def _record(self, request: httpx.Request) -> None:
        self.bodies.append(json.loads(request.read()))

    def take(self) -> list[dict[str, Any]]:
        bodies, self.bodies = self.bodies, []
        return bodies


@pytest.fixture
def requests(client: Client) -> Requests:
    return Requests(client)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_check_grads_to_the_second_order_in_reverse_mode(client: Client, case: Case) -> None:
    check_grads(remote_of(client, case), inputs_of(case), order=2, modes=["rev"])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_derivatives_equal_local_jax(client: Client, case: Case) -> None:
    f = remote_of(client, case)
    xs = inputs_of(case, seed=1)
    argnums = tuple(range(len(xs)))
    close(f(*xs), case.local(*xs))
    close(jax.jacrev(f, argnums)(*xs), jax.jacrev(case.local, argnums)(*xs))
    g = jnp.asarray(np.random.default_rng(2).random(np.shape(case.local(*xs))))
    value, pullback = jax.vjp(f, *xs)
    local_value, local_pullback = jax.vjp(case.local, *xs)
    close(value, local_value)
    close(pullback(g), local_pullback(g))

    # Reverse over reverse: the Jacobian of the pullback with respect to the inputs and to g.
    def pulled(function: Callable[..., Array]) -> Callable[..., Array]:
        return lambda g, *xs: jax.vjp(function, *xs)[1](g)

    every = tuple(range(len(xs) + 1))
    close(jax.jacrev(pulled(f), every)(g, *xs), jax.jacrev(pulled(case.local), every)(g, *xs))
    if case.scalar:
        close(jax.grad(f, argnums)(*xs), jax.grad(case.local, argnums)(*xs))
        close(jax.jacrev(jax.grad(f, argnums), argnums)(*xs), jax.jacrev(jax.grad(case.local, argnums), argnums)(*xs))


def test_a_remote_formula_inside_a_local_graph_has_the_local_derivatives(client: Client) -> None:
    # A local layer before and after the service's, against the same network all in local JAX.
    layer = remote(client, "sigmoid(h @ w.T)", ["h", "w"])
    rng = np.random.default_rng(3)
    params = tuple(jnp.asarray(rng.standard_normal(shape)) for shape in [(5, 3), (3, 4), (2, 4), (2, 1)])

    def network(inner: Callable[[Array, Array], Array]) -> Callable[..., Array]:
        def loss(x: Array, w1: Array, w2: Array, v: Array) -> Array:
            h = jnp.tanh(x @ w1)  # local, before
            o = inner(h, w2)  # remote, or local
            return jnp.mean((o @ v - 0.5) ** 2) + 0.01 * jnp.sum(w1**2)  # local, after

        return loss

    remote_loss = network(layer)
    local_loss = network(lambda h, w: jax.nn.sigmoid(h @ w.T))
    argnums = (0, 1, 2, 3)
    close(remote_loss(*params), local_loss(*params))
    close(jax.grad(remote_loss, argnums)(*params), jax.grad(local_loss, argnums)(*params))
    close(
        jax.jacrev(jax.grad(remote_loss, argnums), argnums)(*params),
        jax.jacrev(jax.grad(local_loss, argnums), argnums)(*params),
    )
    close(
        jax.jit(jax.grad(remote_loss, argnums))(*params),
        jax.grad(local_loss, argnums)(*params),
    )
    check_grads(remote_loss, params, order=2, modes=["rev"])


def test_vmap_is_one_batched_request_per_pass(client: Client, requests: Requests) -> None:
    case = CASES[0]
    f = remote_of(client, case)
    a, b = inputs_of(case, seed=4, points=5)
    shared = b[0]
    f(a[0], shared)  # learns the value's shape
    requests.take()
    values = jax.vmap(f, in_axes=(0, None))(a, shared)
    (body,) = requests.take()
    assert body["batch"] == ["a"]
    assert body["inputs"]["b"] == np.asarray(shared).tolist()  # shared: sent once
    grads = jax.vmap(jax.grad(f, (0, 1)), in_axes=(0, None))(a, shared)
    (body,) = requests.take()
    assert body["batch"] == ["a"]
    assert body["derivatives"] == ["grad"]
    close(grads, jax.vmap(jax.grad(case.local, (0, 1)), in_axes=(0, None))(a, shared))
    close(values, jnp.stack([f(a[i], shared) for i in range(5)]))
    each = [jax.grad(f, (0, 1))(a[i], shared) for i in range(5)]
    close(grads, tuple(jnp.stack([e[k] for e in each]) for k in range(2)))
    # Both inputs batched; and the Hessian at every point, by reverse over reverse.
    close(jax.vmap(f)(a, b), jax.vmap(case.local)(a, b))
    requests.take()
    hessians = jax.vmap(jax.jacrev(jax.grad(f)))(a, b)
    assert len(requests.take()) == 2  # the gradients, then every Hessian-vector product at once
    close(hessians, jax.vmap(jax.jacrev(jax.grad(case.local)))(a, b))


def test_vmap_of_a_vector_valued_formula_and_its_jacobian(client: Client) -> None:
    case = CASES[2]
    f = remote_of(client, case)
    w, x, b = inputs_of(case, seed=5, points=4)
    in_axes = (None, 0, 0)
    close(jax.vmap(f, in_axes)(w[0], x, b), jax.vmap(case.local, in_axes)(w[0], x, b))
    jacobians = jax.vmap(jax.jacrev(f, (0, 1, 2)), in_axes)(w[0], x, b)
    close(jacobians, jax.vmap(jax.jacrev(case.local, (0, 1, 2)), in_axes)(w[0], x, b))
    # Nested: points within groups.
    xs = x.reshape(2, 2, 2)
    nested = jax.vmap(jax.vmap(f, in_axes), (None, 0, None))(w[0], xs, b[:2])
    close(nested, jax.vmap(jax.vmap(case.local, in_axes), (None, 0, None))(w[0], xs, b[:2]))


def test_each_pass_is_one_request(client: Client, requests: Requests) -> None:
    f = remote_of(client, CASES[0])
    a, b = inputs_of(CASES[0])
    f(a, b)
    dry, body = requests.take()  # the first call at these shapes learns the value's shape
    assert dry["dry_run"] is True
    assert body["derivatives"] == []
    f(a, b)
    assert len(requests.take()) == 1
    jax.grad(f, (0, 1))(a, b)
    (body,) = requests.take()  # a scalar's gradient comes with its value
    assert body["derivatives"] == ["grad"]
    jax.jacrev(jax.grad(f, (0, 1)), (0, 1))(a, b)
    first, second = requests.take()
    assert first["derivatives"] == ["grad"]
    assert second["derivatives"] == ["hvp"]

    vector = remote_of(client, CASES[1])
    xs = inputs_of(CASES[1])
    vector(*xs)
    requests.take()
    _, pullback = jax.vjp(vector, *xs)
    (body,) = requests.take()
    assert body["derivatives"] == []
    pullback(jnp.ones(3))
    (body,) = requests.take()
    assert body["derivatives"] == ["grad"]
    assert body["grad_output"] == [1.0, 1.0, 1.0]


def test_constants_are_sent_and_never_differentiated(client: Client, requests: Requests) -> None:
    case = CASES[4]
    f = remote_of(client, case)
    z, w = inputs_of(case)
    jax.grad(f, (0, 1))(z, w)
    bodies = requests.take()
    assert bodies[-1]["wrt"] == ["z", "w"]
    assert bodies[-1]["inputs"]["t"]["dtype"] == "int64"
    with pytest.raises(TypeError, match="must be floating"):
        remote(client, "sum(x)", ["x"])(jnp.arange(3))


def test_the_dtype_follows_the_arrays(client: Client, requests: Requests) -> None:
    f = remote_of(client, CASES[0])
    a, b = (x.astype(jnp.float32) for x in inputs_of(CASES[0]))
    grads = jax.grad(f, (0, 1))(a, b)
    assert f(a, b).dtype == jnp.float32
    assert [g.dtype for g in grads] == [jnp.float32, jnp.float32]
    assert {body["dtype"] for body in requests.take()} == {"float32"}
    grads = jax.grad(f, (0, 1))(a, b.astype(jnp.float64))
    assert [g.dtype for g in grads] == [jnp.float32, jnp.float64]
    assert {body["dtype"] for body in requests.take()} == {"float64"}


def test_without_x64_everything_is_float32(client: Client, requests: Requests) -> None:
    jax.config.update("jax_enable_x64", False)
    case = CASES[0]
    f = remote_of(client, case)
    xs = tuple(x.astype(jnp.float32) for x in inputs_of(case))
    grads = jax.grad(f, (0, 1))(*xs)
    np.testing.assert_allclose(grads[0], jax.grad(case.local)(*xs), rtol=1e-5)
    assert {body["dtype"] for body in requests.take()} == {"float32"}


def test_a_float64_constant_makes_the_request_float64(client: Client, requests: Requests) -> None:
    """(x * c) - (x * d) with c = 1 + 1e-10 is 1e-10 in float64, 0 in float32 (c rounds to 1)."""
    constants = {"c": np.array([1 + 1e-10]), "d": 1.0}
    x = jnp.ones(1, dtype=jnp.float32)
    f = remote(client, "sum(x * c) - sum(x * d)", ["x"], constants)
    value, grad = jax.value_and_grad(f)(x)
    assert value.dtype == jnp.float32 and float(value) == pytest.approx(1e-10, rel=1e-5)
    assert grad.dtype == jnp.float32
    assert {body["dtype"] for body in requests.take()} == {"float64"}
    # A Python number has no dtype of its own: it does not choose.
    remote(client, "sum(x * d)", ["x"], {"d": 1.0})(x)
    assert {body["dtype"] for body in requests.take()} == {"float32"}
    # Without x64, JAX makes a float64 array float32: so is the request.
    jax.config.update("jax_enable_x64", False)
    assert float(remote(client, "sum(x * c) - sum(x * d)", ["x"], constants)(x)) == 0.0
    assert {body["dtype"] for body in requests.take()} == {"float32"}


def test_one_third_order_error_for_both_adapters() -> None:
    torch_adapter = pytest.importorskip("gradient_client.torch")
    assert ThirdOrderError is torch_adapter.ThirdOrderError and issubclass(ThirdOrderError, RuntimeError)


def test_forward_mode_is_refused(client: Client) -> None:
    f = remote_of(client, CASES[0])
    a, b = inputs_of(CASES[0])
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(f, (a, b), (a, b))


def test_third_derivatives_are_refused(client: Client) -> None:
    scalar, vector = remote_of(client, CASES[0]), remote_of(client, CASES[1])
    a, b = inputs_of(CASES[0])
    with pytest.raises(ThirdOrderError, match="differentiates twice at most"):
        jax.jacrev(jax.jacrev(jax.grad(scalar)))(a, b)
    # Also where a local term would have hidden a missing third derivative.
    with pytest.raises(ThirdOrderError, match="differentiates twice at most"):
        jax.grad(lambda a: jnp.sum(jax.jacrev(jax.grad(scalar))(a, b)) + jnp.sum(a**5))(a)
    with pytest.raises(ThirdOrderError, match="differentiates twice at most"):
        jax.jacrev(jax.jacrev(jax.jacrev(vector)))(*inputs_of(CASES[1]))


def test_service_errors_reach_the_caller(client: Client) -> None:
    # Found by the dry run, at trace time: the client's own error.
    with pytest.raises(GradientError, match="unknown_name"):
        remote(client, "a + nowhere", ["a"])(jnp.ones(2))
    # Found while computing, inside the callback: JAX's runtime error, with the service's words.
    f = remote(client, "cross_entropy(z, t)", ["z"], {"t": np.array([0, 7])})
    with pytest.raises(jax.errors.JaxRuntimeError, match="class_index_out_of_range"):
        f(jnp.ones((2, 3)))
