"""Saved formulas served as Tesseracts, driven by Tesseract's own client (``tesseract_core``) and
by tesseract-jax, against a real server (with its compute workers): apply, Jacobian, JVP, VJP and
abstract_eval against torch, both array encodings, and errors as the client raises them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pydantic
import pytest
import torch

from tests.e2e.serving import Server, running_server

tesseract_core = pytest.importorskip("tesseract_core")  # in the test extra
Tesseract = tesseract_core.Tesseract

pytestmark = pytest.mark.e2e

FORMULAS: dict[str, dict[str, Any]] = {
    "mix": {
        "expression": "a * sin(x) + b * x ** 2",
        "inputs": {
            "x": {"shape": [3], "dtype": "float64"},
            "a": {"shape": [3], "dtype": "float64"},
            "b": {"shape": [], "dtype": "float64"},
        },
        "description": "A vector of three from three inputs.",
    },
    "rosenbrock": {
        "expression": "sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)",
        "inputs": {"x": {"shape": [4], "dtype": "float64"}},
    },
    "layer32": {
        "expression": "tanh(w @ x)",
        "inputs": {"w": {"shape": [2, 3], "dtype": "float32"}, "x": {"shape": [3], "dtype": "float32"}},
    },
}
TORCH: dict[str, Callable[..., torch.Tensor]] = {
    "mix": lambda x, a, b: a * torch.sin(x) + b * x**2,
    "rosenbrock": lambda x: (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum(),
    "layer32": lambda w, x: torch.tanh(w @ x),
}
POINTS: dict[str, dict[str, np.ndarray[Any, Any]]] = {
    "mix": {"x": np.array([0.3, -1.2, 2.5]), "a": np.array([1.5, 0.5, -2.0]), "b": np.array(0.75)},
    "rosenbrock": {"x": np.array([-1.2, 1.0, 0.5, 2.0])},
    "layer32": {
        "w": np.array([[0.2, -0.4, 1.1], [0.7, 0.3, -0.9]], dtype=np.float32),
        "x": np.array([1.0, -0.5, 0.25], dtype=np.float32),
    },
}
EXACT = 1e-13
"""float64 results agree with torch's to the last bits or so (float32 ones to torch's defaults)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("tesseract")
    with running_server(folder / "server.log", GRADIENT_DATA_DIR=str(folder / "data")) as started:
        base = started[0]
        for name, formula in FORMULAS.items():
            saved = httpx.put(f"{base}/v1/formulas/{name}", json=formula, timeout=60)
            assert saved.status_code == 201, saved.text
        yield started


def tesseract(server: Server, name: str) -> Any:
    return Tesseract.from_url(f"{server[0]}/tesseract/{name}", timeout=120)


def tensors(name: str) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.array(value)) for key, value in POINTS[name].items()}


def close(actual: Any, expected: torch.Tensor, tolerance: float | None = None) -> None:
    assert isinstance(actual, np.ndarray), type(actual)
    assert actual.dtype == np.dtype(str(expected.dtype).removeprefix("torch."))
    torch.testing.assert_close(torch.from_numpy(np.array(actual)), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name", list(FORMULAS))
def test_apply_jacobian_vjp_jvp_match_torch(server: Server, name: str) -> None:
    client, fn, point = tesseract(server, name), TORCH[name], tensors(name)
    tolerance = EXACT if name != "layer32" else None
    names = list(point)
    assert set(client.available_endpoints) >= {
        "apply",
        "jacobian",
        "jacobian_vector_product",
        "vector_jacobian_product",
        "abstract_eval",
        "health",
    }
    value = fn(**point)
    close(client.apply(POINTS[name])["value"], value, tolerance)

    jacobian = client.jacobian(POINTS[name], jac_inputs=names, jac_outputs=["value"])
    expected = torch.func.jacrev(lambda *xs: fn(**dict(zip(names, xs, strict=True))), argnums=tuple(range(len(names))))(
        *point.values()
    )
    assert set(jacobian["value"]) == set(names)
    for key, block in zip(names, expected, strict=True):
        close(jacobian["value"][key], block, tolerance)

    generator = np.random.default_rng(0)
    cotangent = generator.standard_normal(value.shape).astype(POINTS[name][names[0]].dtype)
    pullback = torch.func.vjp(lambda *xs: fn(**dict(zip(names, xs, strict=True))), *point.values())[1]
    grads = pullback(torch.from_numpy(np.array(cotangent)))
    vjp = client.vector_jacobian_product(POINTS[name], names, ["value"], {"value": cotangent})
    for key, grad in zip(names, grads, strict=True):
        close(vjp[key], grad, tolerance)

    tangents = {key: generator.standard_normal(array.shape).astype(array.dtype) for key, array in POINTS[name].items()}
    jvp = torch.func.jvp(
        lambda *xs: fn(**dict(zip(names, xs, strict=True))),
        tuple(point.values()),
        tuple(torch.from_numpy(np.array(tangents[key])) for key in names),
    )[1]
    close(client.jacobian_vector_product(POINTS[name], names, ["value"], tangents)["value"], jvp, tolerance)


def test_derivatives_wrt_some_inputs_and_abstract_eval(server: Server) -> None:
    client, point = tesseract(server, "mix"), tensors("mix")
    x, a, b = point["x"], point["a"], point["b"]
    jacobian = client.jacobian(POINTS["mix"], jac_inputs=["b"], jac_outputs=["value"])
    assert set(jacobian["value"]) == {"b"}
    close(jacobian["value"]["b"], x**2, EXACT)  # d value / d b, of shape (3,) + ()
    cotangent = np.array([1.0, -2.0, 0.5])
    vjp = client.vector_jacobian_product(POINTS["mix"], ["x"], ["value"], {"value": cotangent})
    assert set(vjp) == {"x"}
    close(vjp["x"], torch.from_numpy(cotangent) * (a * torch.cos(x) + 2 * b * x), EXACT)
    abstract = {
        name: {"shape": list(spec["shape"]), "dtype": spec["dtype"]} for name, spec in FORMULAS["mix"]["inputs"].items()
    }
    assert client.abstract_eval(abstract) == {"value": {"shape": [3], "dtype": "float64"}}
    assert tesseract(server, "layer32").abstract_eval(
        {"w": {"shape": [2, 3], "dtype": "float32"}, "x": {"shape": [3], "dtype": "float32"}}
    ) == {"value": {"shape": [2], "dtype": "float32"}}
    assert client.health() == {"status": "ok"}


def test_both_output_formats_and_casting_inputs(server: Server) -> None:
    client = tesseract(server, "rosenbrock")
    capabilities = client.server_capabilities
    assert capabilities.output_formats == ("json", "json+base64")
    assert capabilities.gpu_transports == ("none",)
    expected = TORCH["rosenbrock"](**tensors("rosenbrock"))
    for output_format in ("json", "json+base64"):
        close(client.with_encoding(output_format=output_format).apply(POINTS["rosenbrock"])["value"], expected, EXACT)
    # An input sent as float32 or int64 is cast to the declared float64, as Tesseract's runtime casts.
    as_float32 = client.apply({"x": POINTS["rosenbrock"]["x"].astype(np.float32)})["value"]
    close(as_float32, TORCH["rosenbrock"](torch.tensor(POINTS["rosenbrock"]["x"], dtype=torch.float32).double()))
    assert client.apply({"x": np.array([1, 1, 1, 1])})["value"] == 0.0  # the minimum, from integers
    with pytest.raises(ValueError, match="does not accept"):
        client.with_encoding(output_format="json+binref")


def test_the_openapi_document_is_the_formulas(server: Server) -> None:
    document = tesseract(server, "mix").openapi_schema
    schemas = document["components"]["schemas"]
    assert list(schemas["Apply_InputSchema"]["properties"]) == ["x", "a", "b"]
    assert list(schemas["Apply_OutputSchema"]["properties"]) == ["value"]
    assert schemas["ApplyInputSchema"]["differentiable_arrays"] == {
        "x": {"shape": [3], "dtype": "float64"},
        "a": {"shape": [3], "dtype": "float64"},
        "b": {"shape": [], "dtype": "float64"},
    }
    assert schemas["ApplyOutputSchema"]["differentiable_arrays"] == {"value": {"shape": [3], "dtype": "float64"}}
    assert document["info"]["title"] == "mix"
    assert document["info"]["description"] == "A vector of three from three inputs."


def test_errors_as_the_client_raises_them(server: Server) -> None:
    with pytest.raises(RuntimeError, match="Error 404 from Tesseract") as missing:
        tesseract(server, "no-such-formula").apply({"x": np.zeros(3)})
    assert "formula_not_found" in str(missing.value)
    client = tesseract(server, "mix")
    with pytest.raises(pydantic.ValidationError) as wrong_shape:
        client.apply({"x": np.zeros(4), "a": np.zeros(3), "b": np.array(1.0)})
    [error] = wrong_shape.value.errors()
    assert error["loc"] == ("body", "inputs", "x", "shape")
    assert error["type"] == "array_shape_mismatch"
    with pytest.raises(pydantic.ValidationError) as unknown:
        client.jacobian(POINTS["mix"], jac_inputs=["y"], jac_outputs=["value"])
    assert [error["loc"] for error in unknown.value.errors()] == [("body", "jac_inputs", 0)]
    with pytest.raises(pydantic.ValidationError) as missing_input:
        client.apply({"x": np.zeros(3), "a": np.zeros(3)})
    assert [(error["loc"], error["type"]) for error in missing_input.value.errors()] == [
        (("body", "inputs", "b"), "missing")
    ]
    with pytest.raises(pydantic.ValidationError) as wrong_cotangent:
        client.vector_jacobian_product(POINTS["mix"], ["x"], ["value"], {"value": np.zeros(2)})
    assert [error["type"] for error in wrong_cotangent.value.errors()] == ["array_shape_mismatch"]
    answer = httpx.get(f"{server[0]}/tesseract/mix/apply")
    assert (answer.status_code, answer.json(), answer.headers["allow"]) == (
        405,
        {"detail": "Method Not Allowed"},
        "POST",
    )


def test_tesseract_jax_differentiates_through_the_server(server: Server) -> None:
    jax = pytest.importorskip("jax")
    tesseract_jax = pytest.importorskip("tesseract_jax")
    jnp = jax.numpy
    client = tesseract(server, "layer32")
    w, x = (jnp.asarray(POINTS["layer32"][key]) for key in ("w", "x"))

    def loss(w: Any, x: Any) -> Any:
        return tesseract_jax.apply_tesseract(client, {"w": w, "x": x})["value"].sum()

    value, (grad_w, grad_x) = jax.value_and_grad(loss, argnums=(0, 1))(w, x)
    point = {key: tensor.requires_grad_() for key, tensor in tensors("layer32").items()}
    expected = TORCH["layer32"](**point).sum()
    expected.backward()
    torch.testing.assert_close(torch.tensor(float(value)), expected.detach())
    torch.testing.assert_close(torch.tensor(np.array(grad_w)), point["w"].grad)
    torch.testing.assert_close(torch.tensor(np.array(grad_x)), point["x"].grad)

    # A float64 formula, with JAX in float64: reverse and forward mode, exact.
    rosenbrock = tesseract(server, "rosenbrock")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        start = jnp.asarray(POINTS["rosenbrock"]["x"])
        gradient = jax.grad(lambda x: tesseract_jax.apply_tesseract(rosenbrock, {"x": x})["value"])(start)
        direction = jnp.asarray([1.0, -1.0, 0.5, 2.0])
        slope = jax.jvp(lambda x: tesseract_jax.apply_tesseract(rosenbrock, {"x": x})["value"], (start,), (direction,))[
            1
        ]
    finally:
        jax.config.update("jax_enable_x64", before)
    x64 = tensors("rosenbrock")["x"].requires_grad_()
    TORCH["rosenbrock"](x64).backward()
    assert x64.grad is not None
    close(np.array(gradient), x64.grad, EXACT)
    close(np.array(slope), x64.grad @ torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64), EXACT)


def test_a_deleted_formula_is_gone(server: Server) -> None:
    base = server[0]
    assert httpx.put(f"{base}/v1/formulas/short-lived", json=FORMULAS["rosenbrock"]).status_code == 201
    client = tesseract(server, "short-lived")
    assert client.apply(POINTS["rosenbrock"])["value"] == pytest.approx(
        TORCH["rosenbrock"](**tensors("rosenbrock")).item()
    )
    assert httpx.delete(f"{base}/v1/formulas/short-lived").status_code in (200, 204)
    with pytest.raises(RuntimeError, match="Error 404 from Tesseract"):
        client.apply(POINTS["rosenbrock"])


def sample(base: str, name: str) -> float:
    lines = [line for line in httpx.get(f"{base}/metrics").text.splitlines() if line.startswith(name + " ")]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_computed_in_a_compute_worker(server: Server) -> None:
    base = server[0]
    assert sample(base, "gradient_workers_alive") >= 1
    before = sample(base, 'gradient_compute_duration_seconds_count{op="tesseract_apply"}')
    tesseract(server, "rosenbrock").apply(POINTS["rosenbrock"])
    assert sample(base, 'gradient_compute_duration_seconds_count{op="tesseract_apply"}') == before + 1
