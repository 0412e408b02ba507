"""The Open Inference Protocol (v2) against a real server, with Triton's own client,
``tritonclient.http``: health and metadata, inference of activations, losses and saved formulas in
JSON and binary, FP32 and FP64, each value checked against torch; and its errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.e2e.serving import Server, running_server

pytestmark = pytest.mark.e2e

NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64}
TORCH = {"FP32": torch.float32, "FP64": torch.float64}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("oip")
    with running_server(
        root / "server.log", GRADIENT_MAX_BODY_BYTES="200000", GRADIENT_DATA_DIR=str(root / "data")
    ) as started:
        yield started


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    base, *_ = server
    triton_client = triton.InferenceServerClient(url=base.removeprefix("http://"), network_timeout=120)
    yield triton_client
    triton_client.close()


def tensor_input(name: str, array: np.ndarray, binary: bool) -> triton.InferInput:
    datatype = {np.dtype(v): k for k, v in NUMPY.items()}[array.dtype]
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=binary)
    return item


def wanted(names: list[str], binary: bool) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=binary) for name in names]


def result(answer: triton.InferResult, name: str) -> torch.Tensor:
    array = answer.as_numpy(name)
    assert array is not None, f"no output {name}: {answer.get_response()}"
    return torch.from_numpy(array.copy())


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Exactly what torch computes: same dtype, shape and values (NaN where torch has NaN)."""
    torch.testing.assert_close(actual, expected.detach(), rtol=0, atol=0, equal_nan=True)


def refused(call: Callable[[], object], status: int, *words: str) -> str:
    """The call fails with the protocol's error body: tritonclient raises its message."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == str(status), caught.value
    message = caught.value.message()
    assert all(word in message for word in words), message
    return str(message)


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "gradient-service" and "binary_tensor_data" in server["extensions"]
    sigmoid = client.get_model_metadata("sigmoid")
    assert sigmoid["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1]}]
    assert [output["name"] for output in sigmoid["outputs"]] == ["output", "grad", "grad2"]
    assert [output["name"] for output in client.get_model_metadata("softmax")["outputs"]] == ["output", "grad"]
    loss = client.get_model_metadata("cross_entropy", model_version="1")
    assert [item["name"] for item in loss["inputs"]] == ["input", "target", "weight"]
    assert [item["name"] for item in loss["outputs"]] == ["loss", "grad_input", "grad_target", "grad_weight"]
    assert client.is_model_ready("sigmoid") and client.is_model_ready("mse", model_version="1")
    assert not client.is_model_ready("no_such_model") and not client.is_model_ready("mse", model_version="2")
    refused(lambda: client.get_model_metadata("no_such_model"), 404, "no_such_model")


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize(("binary_in", "binary_out"), [(False, False), (True, True), (False, True), (True, False)])
def test_activation_values_and_derivatives(
    client: triton.InferenceServerClient, datatype: str, binary_in: bool, binary_out: bool
) -> None:
    x = torch.linspace(-4, 4, 24, dtype=TORCH[datatype]).reshape(2, 3, 4)
    answer = client.infer(
        "gelu",
        [tensor_input("input", x.numpy(), binary_in)],
        outputs=wanted(["output", "grad", "grad2"], binary_out),
        parameters={"approximate": "tanh"},
        request_id="42",
    )
    assert answer.get_response()["id"] == "42" and answer.get_response()["model_name"] == "gelu"
    leaf = x.clone().requires_grad_(True)
    y = F.gelu(leaf, approximate="tanh")
    (grad,) = torch.autograd.grad(y, leaf, torch.ones_like(y), create_graph=True)
    (grad2,) = torch.autograd.grad(grad, leaf, torch.ones_like(grad))
    assert_same(result(answer, "output"), y)
    assert_same(result(answer, "grad"), grad)
    assert_same(result(answer, "grad2"), grad2)


def test_all_outputs_by_default_in_binary(client: triton.InferenceServerClient) -> None:
    x = np.array([-2.0, 0.0, 2.0, np.nan, np.inf], dtype=np.float32)
    answer = client.infer("sigmoid", [tensor_input("input", x, True)])  # tritonclient asks binary_data_output
    assert [output["name"] for output in answer.get_response()["outputs"]] == ["output", "grad"]
    assert all("binary_data_size" in output["parameters"] for output in answer.get_response()["outputs"])
    assert_same(result(answer, "output"), torch.sigmoid(torch.from_numpy(x)))
    second = client.infer("sigmoid", [tensor_input("input", x, False)], parameters={"second_order": True})
    assert [output["name"] for output in second.get_response()["outputs"]] == ["output", "grad", "grad2"]
    json_out = client.infer("sigmoid", [tensor_input("input", x, False)], outputs=wanted(["output"], False))
    assert_same(result(json_out, "output"), torch.sigmoid(torch.from_numpy(x)))  # NaN and inf in JSON too


def test_compressed_requests_and_responses(client: triton.InferenceServerClient) -> None:
    x = np.linspace(-1, 1, 1000, dtype=np.float64)
    for algorithm in ("gzip", "deflate"):
        answer = client.infer(
            "tanh",
            [tensor_input("input", x, True)],
            outputs=wanted(["grad"], True),
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        leaf = torch.from_numpy(x).requires_grad_(True)
        (grad,) = torch.autograd.grad(torch.tanh(leaf).sum(), leaf)
        assert_same(result(answer, "grad"), grad)


@pytest.mark.parametrize("binary", [False, True])
def test_loss_with_class_indices_and_weight(client: triton.InferenceServerClient, binary: bool) -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0], [0.1, -0.3, 2.2, 0.0]])
    target = torch.tensor([3, 0])
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    answer = client.infer(
        "cross_entropy",
        [
            tensor_input("input", logits.numpy(), binary),
            tensor_input("target", target.numpy(), binary),
            tensor_input("weight", weight.numpy(), binary),
        ],
        outputs=wanted(["loss", "grad_input"], binary),
        parameters={"reduction": "sum", "label_smoothing": 0.1},
    )
    leaf = logits.clone().requires_grad_(True)
    loss = F.cross_entropy(leaf, target, weight=weight, reduction="sum", label_smoothing=0.1)
    (grad,) = torch.autograd.grad(loss, leaf)
    assert_same(result(answer, "loss"), loss)
    assert_same(result(answer, "grad_input"), grad)
    refused(
        lambda: client.infer(
            "cross_entropy",
            [tensor_input("input", logits.numpy(), binary), tensor_input("target", target.numpy(), binary)],
            outputs=wanted(["grad_target"], binary),
        ),
        400,
        "grad_target",
    )


def test_loss_with_float_target_and_elementwise_weight(client: triton.InferenceServerClient) -> None:
    p = torch.tensor([[0.2, 0.9], [0.5, 0.01]], dtype=torch.float64)
    t = torch.tensor([[0.0, 1.0], [0.3, 0.5]], dtype=torch.float64)
    w = torch.tensor([[1.0, 2.0], [0.5, 4.0]], dtype=torch.float64)
    answer = client.infer(
        "binary_cross_entropy",
        [
            tensor_input("input", p.numpy(), True),
            tensor_input("target", t.numpy(), False),
            tensor_input("weight", w.numpy(), True),
        ],
        parameters={"reduction": "none"},
    )
    leaves = p.clone().requires_grad_(True), t.clone().requires_grad_(True)
    loss = F.binary_cross_entropy(*leaves, weight=w, reduction="none")
    grad_input, grad_target = torch.autograd.grad(loss, leaves, torch.ones_like(loss))
    assert [output["name"] for output in answer.get_response()["outputs"]] == ["loss", "grad_input", "grad_target"]
    assert_same(result(answer, "loss"), loss)
    assert_same(result(answer, "grad_input"), grad_input)
    assert_same(result(answer, "grad_target"), grad_target)


def put_formula(server: Server, name: str, body: dict[str, Any]) -> dict[str, Any]:
    base, *_ = server
    response = httpx.put(f"{base}/v1/formulas/{name}", json=body)
    assert response.status_code in (200, 201), response.text
    saved: dict[str, Any] = response.json()
    return saved


@pytest.mark.parametrize(("dtype", "binary"), [("float64", True), ("float32", False)])
def test_saved_formula(server: Server, client: triton.InferenceServerClient, dtype: str, binary: bool) -> None:
    name = f"oip-soft-{dtype}"
    datatype = "FP64" if dtype == "float64" else "FP32"
    put_formula(
        server,
        name,
        {
            "expression": "sum(tanh(x) * w) + sum(w ** 2)",
            "inputs": {"x": {"shape": [2, 3], "dtype": dtype}, "w": {"shape": [3], "dtype": dtype}},
        },
    )
    metadata = client.get_model_metadata(name)
    assert metadata["inputs"] == [
        {"name": "x", "datatype": datatype, "shape": [2, 3]},
        {"name": "w", "datatype": datatype, "shape": [3]},
    ]
    assert metadata["outputs"] == [
        {"name": "value", "datatype": datatype, "shape": []},
        {"name": "grad_x", "datatype": datatype, "shape": [2, 3]},
        {"name": "grad_w", "datatype": datatype, "shape": [3]},
    ]
    assert client.is_model_ready(name)
    x = torch.linspace(-1, 1, 6, dtype=TORCH[datatype]).reshape(2, 3)
    w = torch.tensor([0.5, -2.0, 3.0], dtype=TORCH[datatype])
    inputs = [tensor_input("x", x.numpy(), binary), tensor_input("w", w.numpy(), binary)]
    answer = client.infer(name, inputs, outputs=wanted(["value", "grad_x", "grad_w"], binary))
    leaves = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    value = (torch.tanh(leaves[0]) * leaves[1]).sum() + (leaves[1] ** 2).sum()
    grad_x, grad_w = torch.autograd.grad(value, leaves)
    assert_same(result(answer, "value"), value)
    assert_same(result(answer, "grad_x"), grad_x)
    assert_same(result(answer, "grad_w"), grad_w)
    only_w = client.infer(name, inputs, outputs=wanted(["grad_w"], binary), model_version="1")
    assert [output["name"] for output in only_w.get_response()["outputs"]] == ["grad_w"]
    wrong_shape = [tensor_input("x", x[:, :2].contiguous().numpy(), binary), inputs[1]]
    refused(lambda: client.infer(name, wrong_shape), 400, "shape")


def test_a_new_version_replaces_the_old(server: Server, client: triton.InferenceServerClient) -> None:
    name = "oip-versions"
    body = {"expression": "sum(x ** 2)", "inputs": {"x": {"shape": [2], "dtype": "float64"}}}
    put_formula(server, name, body)
    put_formula(server, name, {**body, "expression": "sum(x ** 3)"})
    x = np.array([2.0, -1.0])
    assert client.get_model_metadata(name)["versions"] == ["2"]
    answer = client.infer(name, [tensor_input("x", x, True)], model_version="2")
    assert result(answer, "value").item() == 7.0 and result(answer, "grad_x").tolist() == [12.0, 3.0]
    refused(lambda: client.infer(name, [tensor_input("x", x, True)], model_version="1"), 404, "version")
    assert not client.is_model_ready(name, model_version="1")
    base, *_ = server
    assert httpx.delete(f"{base}/v1/formulas/{name}").status_code in (200, 204)
    refused(lambda: client.infer(name, [tensor_input("x", x, True)]), 404, name)


def test_errors(client: triton.InferenceServerClient) -> None:
    x = np.array([1.0, 2.0], dtype=np.float32)
    refused(lambda: client.infer("no_such_model", [tensor_input("input", x, True)]), 404, "no_such_model")
    half = triton.InferInput("input", [2], "FP16")
    half.set_data_from_numpy(x.astype(np.float16))
    refused(lambda: client.infer("sigmoid", [half]), 400, "FP16")
    refused(
        lambda: client.infer("sigmoid", [tensor_input("input", x, True)], outputs=wanted(["hessian"], True)),
        400,
        "hessian",
    )
    refused(lambda: client.infer("sigmoid", [tensor_input("nope", x, True)]), 400, "nope")
    refused(lambda: client.infer("mse", [tensor_input("input", x, True)]), 400, "target")
    refused(lambda: client.infer("softmax", [tensor_input("input", x, True)], parameters={"second_order": True}), 400)
    refused(lambda: client.infer("elu", [tensor_input("input", x, True)], parameters={"alpha": "big"}), 400, "alpha")
    shorter = tensor_input("input", x, False)
    shorter.set_shape([3])  # three elements announced, two sent
    refused(lambda: client.infer("sigmoid", [shorter]), 400, "shape")
    truncated = tensor_input("input", x, True)
    truncated.set_shape([3])  # binary_data_size 8, but [3] of FP32 takes 12 bytes
    refused(lambda: client.infer("sigmoid", [truncated]), 400, "binary_data_size")
    big = np.zeros(60_000, dtype=np.float32)  # 240 kB, over the server's 200 kB body limit
    refused(lambda: client.infer("sigmoid", [tensor_input("input", big, True)]), 413, "limit")


def test_error_bodies_over_plain_http(server: Server) -> None:
    base, *_ = server
    for response, status in (
        (httpx.get(f"{base}/v2/nowhere"), 404),
        (httpx.post(f"{base}/v2/models/sigmoid/infer", content=b"{"), 400),
        (httpx.post(f"{base}/v2/models/sigmoid/infer", json={"inputs": []}), 400),
        (httpx.get(f"{base}/v2/models/sigmoid/infer"), 405),
    ):
        assert response.status_code == status, response.text
        body = response.json()
        assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], body
    elsewhere = httpx.get(f"{base}/v1/nowhere").json()  # the contract's own body, off /v2
    assert elsewhere["error"]["type"] == "not_found"
