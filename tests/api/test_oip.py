"""The Open Inference Protocol (v2) in process, over raw HTTP: the wire (JSON and binary tensors,
the header length, compression, non-finite literals), the error bodies on /v2 (from routes,
middleware and compute workers alike), readiness and the API keys. tests/e2e/test_oip.py drives
a real server with tritonclient."""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from service import lifecycle
from service.api.responses import protocol_error
from tests.conftest import AppClient, ClientFactory


def infer_body(*inputs: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"inputs": list(inputs), **fields}


def tensor(name: str, values: list[Any], datatype: str = "FP32", shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "shape": [len(values)] if shape is None else shape, "datatype": datatype, "data": values}


def binary_request(header: dict[str, Any], *chunks: bytes) -> dict[str, Any]:
    head = json.dumps(header).encode()
    return {
        "content": head + b"".join(chunks),
        "headers": {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
    }


def split(response: httpx.Response) -> tuple[dict[str, Any], bytes]:
    length = int(response.headers["inference-header-content-length"])
    header: dict[str, Any] = json.loads(response.content[:length])
    return header, response.content[length:]


def oip_error(response: httpx.Response, status: int, *words: str) -> str:
    """The protocol's error body, ``{"error": "<message>"}``, with the status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    assert all(word in body["error"] for word in words), body
    return str(body["error"])


@pytest.fixture(scope="module")
def threads() -> Any:
    """An app computing in threads of its own process (no compute workers)."""
    from service.config import Settings
    from service.main import create_app

    app_client = AppClient(create_app(Settings(compute_processes=0, max_body_bytes=100_000, max_elements=5_000)))
    yield app_client
    app_client.close()


@pytest.fixture(params=["threads", "workers"])
def either(request: pytest.FixtureRequest, threads: AppClient, client: AppClient) -> AppClient:
    """Both ways a computation runs: in the server process's threads, and in compute workers."""
    return threads if request.param == "threads" else client


def test_json_inference_matches_v1(either: AppClient) -> None:
    x = [-2.0, 0.0, 2.0, 5.0]
    v2 = either.post(
        "/v2/models/softplus/infer",
        json=infer_body(tensor("input", x), parameters={"beta": 2.0, "second_order": True}, id="r1"),
    )
    assert v2.status_code == 200, v2.text
    assert v2.headers["content-type"] == "application/json"
    body = v2.json()
    assert body["id"] == "r1" and body["model_name"] == "softplus" and body["model_version"] == "1"
    v1 = either.post(
        "/v1/activations/softplus", json={"input": x, "params": {"beta": 2.0}, "second_order": True}
    ).json()
    assert [output["name"] for output in body["outputs"]] == ["output", "grad", "grad2"]
    for output in body["outputs"]:
        assert output["datatype"] == "FP32" and output["shape"] == [4]
        assert output["data"] == v1[output["name"]]


def test_binary_inference_both_ways(either: AppClient) -> None:
    x = np.linspace(-3, 3, 4096).reshape(64, 64)  # 32 kB: past the inline size, so computed in a worker there
    header = {
        "inputs": [{"name": "input", "shape": [64, 64], "datatype": "FP64", "parameters": {"binary_data_size": 32768}}],
        "outputs": [{"name": "grad", "parameters": {"binary_data": True}}, {"name": "output"}],
    }
    response = either.post("/v2/models/tanh/infer", **binary_request(header, x.tobytes()))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    head, data = split(response)
    grad, output = head["outputs"]
    assert grad == {"name": "grad", "datatype": "FP64", "shape": [64, 64], "parameters": {"binary_data_size": 32768}}
    assert output["data"] == torch.tanh(torch.from_numpy(x)).ravel().tolist()
    leaf = torch.from_numpy(x).requires_grad_(True)
    (expected,) = torch.autograd.grad(torch.tanh(leaf).sum(), leaf)
    assert torch.equal(torch.frombuffer(bytearray(data), dtype=torch.float64).reshape(64, 64), expected)


def test_losses_with_int32_class_indices(either: AppClient) -> None:
    logits = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    body = infer_body(
        tensor("input", [v for row in logits for v in row], shape=[2, 3]), tensor("target", [2, 0], "INT32")
    )
    response = either.post("/v2/models/cross_entropy/infer", json=body)
    assert response.status_code == 200, response.text
    v1 = either.post("/v1/losses/cross_entropy", json={"input": logits, "target": [2, 0]}).json()
    outputs = {output["name"]: output["data"] for output in response.json()["outputs"]}
    assert outputs == {"loss": [v1["loss"]], "grad_input": [v for row in v1["grad"]["input"] for v in row]}
    too_big = infer_body(tensor("input", [1.0, 2.0], shape=[1, 2]), tensor("target", [2**40], "INT32"))
    oip_error(either.post("/v2/models/cross_entropy/infer", json=too_big), 400, "INT32")


def test_saved_formula_in_either_mode(either: AppClient) -> None:
    name = "oip-api-dot"
    formula = {
        "expression": "sum(a * b)",
        "inputs": {"a": {"shape": [3], "dtype": "float32"}, "b": {"shape": [3], "dtype": "float32"}},
    }
    assert either.request("PUT", f"/v1/formulas/{name}", json=formula).status_code in (200, 201)
    body = infer_body(tensor("a", [1.0, 2.0, 3.0]), tensor("b", [4.0, 5.0, 6.0]))
    response = either.post(f"/v2/models/{name}/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output["data"] for output in response.json()["outputs"]}
    assert outputs == {"value": [32.0], "grad_a": [4.0, 5.0, 6.0], "grad_b": [1.0, 2.0, 3.0]}
    oip_error(either.post(f"/v2/models/{name}/infer", json={**body, "parameters": {"alpha": 1}}), 400, "parameters")
    wrong = infer_body(tensor("a", [1.0, 2.0, 3.0], "FP64"), tensor("b", [4.0, 5.0, 6.0]))
    oip_error(either.post(f"/v2/models/{name}/infer", json=wrong), 400, "FP64")
    # Unknown names reach the compute worker (a formula is looked up there): its 404 has the same shape.
    oip_error(either.post("/v2/models/oip-api-missing/infer", json=body), 404, "oip-api-missing")


def test_metadata_of_a_saved_formula(client: AppClient) -> None:
    name = "oip-api-outer"
    formula = {
        "expression": "x * y",
        "inputs": {"x": {"shape": [2, 1], "dtype": "float64"}, "y": {"shape": [3], "dtype": "float64"}},
    }
    assert client.request("PUT", f"/v1/formulas/{name}", json=formula).status_code in (200, 201)
    metadata = client.get(f"/v2/models/{name}").json()
    assert metadata["platform"] == "pytorch_formula" and metadata["versions"] == ["1"]
    assert metadata["outputs"][0] == {"name": "value", "datatype": "FP64", "shape": [2, 3]}
    assert client.get(f"/v2/models/{name}/versions/1/ready").json() == {"name": name, "ready": True}
    oip_error(client.get(f"/v2/models/{name}/versions/7"), 404, "version")


def test_the_wire_is_checked(threads: AppClient) -> None:
    post = threads.post
    x = np.array([1.0, 2.0], dtype=np.float32).tobytes()
    one = {"inputs": [{"name": "input", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}
    oip_error(post("/v2/models/relu/infer", **binary_request(one, x, b"extra")), 400, "13 bytes", "add up to 8")
    oip_error(post("/v2/models/relu/infer", **binary_request(one, x[:4])), 400, "only 4 remain")
    bad_length = binary_request(one, x)
    bad_length["headers"]["Inference-Header-Content-Length"] = "10000"
    oip_error(post("/v2/models/relu/infer", **bad_length), 400, "Inference-Header-Content-Length")
    both = {"inputs": [{**one["inputs"][0], "data": [1, 2]}]}
    oip_error(post("/v2/models/relu/infer", **binary_request(both, x)), 400, "both")
    twice = infer_body(tensor("input", [1.0]), tensor("input", [2.0]))
    oip_error(post("/v2/models/relu/infer", json=twice), 400, "twice")
    repeated = infer_body(tensor("input", [1.0]), outputs=[{"name": "grad"}, {"name": "grad"}])
    oip_error(post("/v2/models/relu/infer", json=repeated), 400, "twice")
    no_data = infer_body({"name": "input", "shape": [1], "datatype": "FP32"})
    oip_error(post("/v2/models/relu/infer", json=no_data), 400, "no data")
    classes = infer_body(tensor("input", [1.0]), outputs=[{"name": "output", "parameters": {"classification": 2}}])
    oip_error(post("/v2/models/relu/infer", json=classes), 400, "classification")
    not_a_flag = infer_body(tensor("input", [1.0]), parameters={"binary_data_output": 1})
    oip_error(post("/v2/models/relu/infer", json=not_a_flag), 400, "binary_data_output")
    schema = post("/v2/models/relu/infer", json={"inputs": [{"name": "input", "shape": [-1], "datatype": "FP32"}]})
    oip_error(schema, 400, "schema", "shape")  # a schema violation is a 400 on /v2, not a 422
    oip_error(post("/v2/models/relu/infer", json=infer_body(tensor("input", [0.0] * 5_001))), 413, "5000")


def test_nested_data_and_non_finite_literals(threads: AppClient) -> None:
    data = b'[[NaN, Infinity], [-Infinity, "NaN"]]'  # the literals as tritonclient writes them, and our strings
    body = b'{"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP64", "data": ' + data + b"}]}"
    response = threads.post("/v2/models/sigmoid/infer", content=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == ["NaN", 1.0, 0.0, "NaN"]


def test_compressed_bodies(threads: AppClient) -> None:
    body = json.dumps(infer_body(tensor("input", [0.0, 1.0]))).encode()
    response = threads.post("/v2/models/silu/infer", content=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    oip_error(
        threads.post("/v2/models/silu/infer", content=b"garbage", headers={"Content-Encoding": "gzip"}), 400, "gzip"
    )
    oip_error(threads.post("/v2/models/silu/infer", content=body, headers={"Content-Encoding": "br"}), 415, "br")
    trailing = gzip.compress(body) + b"junk"
    oip_error(
        threads.post("/v2/models/silu/infer", content=trailing, headers={"Content-Encoding": "gzip"}), 400, "after"
    )
    bomb = gzip.compress(b" " * 1_000_000)  # 1 MB of spaces in 1 kB, over the 100 kB limit once inflated
    oip_error(
        threads.post("/v2/models/silu/infer", content=bomb, headers={"Content-Encoding": "gzip"}), 413, "inflated"
    )


def test_errors_keep_the_contract_elsewhere(threads: AppClient) -> None:
    oip_error(threads.get("/v2/models/nope"), 404, "nope")
    oip_error(threads.get("/v2/nowhere"), 404, "/v2/nowhere")
    oip_error(threads.post("/v2/models/relu/infer", content=b"x" * 200_000), 413, "limit")  # from the middleware
    v1 = threads.post("/v1/activations/relu", content=b"x" * 200_000).json()
    assert v1["error"]["type"] == "body_too_large"
    assert threads.get("/v2x").json()["error"]["type"] == "not_found"  # only /v2 and below speak the protocol


def test_internal_errors_keep_their_request_id() -> None:
    body = {"error": {"type": "internal_error", "message": "It broke.", "request_id": "abc"}}
    assert protocol_error({"path": "/v2/models/x/infer"}, 500, body) == (500, {"error": "It broke. (request id abc)"})
    assert protocol_error({"path": "/v1/x"}, 422, body) == (422, body)
    assert protocol_error({"path": "/api/v2", "root_path": "/api"}, 422, body)[0] == 400


def test_readiness_follows_the_server(threads: AppClient) -> None:
    assert threads.get("/v2/health/ready").json() == {"ready": True}
    lifecycle.draining.set()
    try:
        assert threads.get("/v2/health/ready").status_code == 503
        response = threads.get("/v2/models/relu/ready")
        assert response.status_code == 503 and response.json() == {"name": "relu", "ready": False}
        assert threads.get("/v2/health/live").json() == {"live": True}
    finally:
        lifecycle.draining.clear()


def test_api_keys_guard_the_models_but_not_the_probes(make_client: ClientFactory) -> None:
    keyed = make_client(compute_processes=0, api_keys="secret")
    assert keyed.get("/v2/health/live").status_code == 200
    assert keyed.get("/v2/health/ready").status_code == 200
    oip_error(keyed.get("/v2"), 401, "API key")
    oip_error(keyed.post("/v2/models/relu/infer", json=infer_body(tensor("input", [1.0]))), 401, "API key")
    authorised = keyed.get("/v2/models/relu", headers={"Authorization": "Bearer secret"})
    assert authorised.status_code == 200 and authorised.json()["name"] == "relu"


def test_openapi_documents_the_protocol(threads: AppClient) -> None:
    paths = threads.get("/openapi.json").json()["paths"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert set(infer["responses"]["200"]["content"]) == {"application/json", "application/octet-stream"}
    assert infer["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/OipError")
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready"):
        assert "get" in paths[path]
