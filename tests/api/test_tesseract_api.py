"""The Tesseract endpoints in process: array encodings both ways, content negotiation, and every
kind of error in Tesseract's shapes, with and without compute workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pybase64
import pytest
import torch

from tests.conftest import AppClient, ClientFactory

FORMULA = {
    "expression": "sum(a * x ** 2) + b",
    "inputs": {
        "x": {"shape": [3], "dtype": "float64"},
        "a": {"shape": [3], "dtype": "float64"},
        "b": {"shape": [], "dtype": "float32"},
    },
}


def encoded(values: Any, dtype: str = "float64") -> dict[str, Any]:
    array = np.asarray(values, dtype=dtype)
    buffer = pybase64.b64encode_as_string(array.tobytes())
    return {"shape": list(array.shape), "dtype": dtype, "data": {"buffer": buffer, "encoding": "base64"}}


INPUTS = {"x": encoded([1.0, 2.0, 3.0]), "a": encoded([1.0, 1.0, 2.0]), "b": encoded(0.5, "float32")}


def decoded(array: dict[str, Any]) -> np.ndarray[Any, Any]:
    assert array["object_type"] == "array"
    data = array["data"]
    if data["encoding"] == "base64":
        raw = np.frombuffer(pybase64.b64decode(data["buffer"]), dtype=array["dtype"])
        return raw.reshape(array["shape"])
    assert data["encoding"] == "json"
    return np.asarray(data["buffer"], dtype=array["dtype"]).reshape(array["shape"])


@pytest.fixture
def saved(make_client: ClientFactory, tmp_path: Path) -> AppClient:
    client = make_client(compute_processes=0, data_dir=str(tmp_path), max_jacobian_elements=4)
    assert client.request("PUT", "/v1/formulas/quad", json=FORMULA).status_code == 201
    return client


def detail(response: Any, status: int) -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["detail"]
    return body["detail"]


def test_json_and_base64_answers(saved: AppClient) -> None:
    x, a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)
    body = {"inputs": INPUTS, "jac_inputs": ["x", "b"], "jac_outputs": ["value"]}
    for accept, encoding in [
        (None, "base64"),
        ("*/*", "base64"),
        ("application/json", "json"),
        ("application/json+base64; gpu_transport=none", "base64"),
        ("application/json+binref, application/json;q=0.5", "json"),
        ("application/json;q=0.2, application/json+base64;q=0.9", "base64"),
        ("application/json+base64;q=0, application/json", "json"),
    ]:
        headers = {} if accept is None else {"accept": accept}
        response = saved.post("/tesseract/quad/jacobian", json=body, headers=headers)
        assert response.status_code == 200, response.text
        jacobian = response.json()["value"]
        assert {block["data"]["encoding"] for block in jacobian.values()} == {encoding}
        np.testing.assert_array_equal(decoded(jacobian["x"]), (2 * a * x).numpy())
        assert decoded(jacobian["b"]).dtype == np.float32  # of b's declared dtype
        assert decoded(jacobian["b"]) == 1.0


def test_inputs_in_json_nested_or_flat_and_cast(saved: AppClient) -> None:
    inputs = {
        "x": {"shape": [3], "dtype": "int64", "data": {"buffer": [1, 2, 3], "encoding": "json"}},
        "a": {
            "object_type": "array",
            "shape": [3],
            "dtype": "float32",
            "data": {"buffer": [1, 1, 2], "encoding": "json"},
        },
        "b": {"shape": [], "dtype": "float64", "data": {"buffer": 0.5, "encoding": "json"}},
    }
    answer = saved.post("/tesseract/quad/apply", json={"inputs": inputs}, headers={"accept": "application/json"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {
        "value": {"object_type": "array", "shape": [], "dtype": "float64", "data": {"buffer": 23.5, "encoding": "json"}}
    }


def test_refused_encodings_are_406(saved: AppClient) -> None:
    for accept in (
        "application/json+binref",
        "application/json; gpu_transport=cuda_ipc",
        "text/html",
        "application/*; compression=lz4",
    ):
        response = saved.post("/tesseract/quad/apply", json={"inputs": INPUTS}, headers={"accept": accept})
        refusal = detail(response, 406)
        assert refusal["available_formats"] == ["json", "json+base64"]


@pytest.mark.parametrize(
    ("array", "kind", "where"),
    [
        (encoded([1.0, 2.0]), "array_shape_mismatch", ["shape"]),
        (encoded([[1.0, 2.0, 3.0]]), "array_shape_mismatch", ["shape"]),
        ({**encoded([1.0, 2.0, 3.0]), "dtype": "complex64"}, "literal_error", ["dtype"]),
        ({**encoded([1.0, 2.0, 3.0]), "object_type": "tensor"}, "literal_error", ["object_type"]),
        ({**encoded([1.0, 2.0, 3.0]), "extra": 1}, "extra_forbidden", ["extra"]),
        ({"shape": [3], "dtype": "float64"}, "missing", ["data"]),
        (
            {"shape": [3], "dtype": "float64", "data": {"buffer": "/etc/passwd:0", "encoding": "binref"}},
            "encoding_not_supported",
            ["data", "encoding"],
        ),
        (
            {"shape": [3], "dtype": "float64", "data": {"buffer": [1.0, 2.0, 3.0], "encoding": "raw"}},
            "literal_error",
            ["data", "encoding"],
        ),
        (
            {"shape": [3], "dtype": "float64", "data": {"buffer": "AAAA", "encoding": "base64"}},
            "array_decode_error",
            ["data", "buffer"],
        ),
        (
            {"shape": [3], "dtype": "float64", "data": {"buffer": "not base64!", "encoding": "base64"}},
            "array_decode_error",
            ["data", "buffer"],
        ),
        (
            {**encoded([1.0, 2.0, 3.0]), "data": {**encoded([1.0, 2.0, 3.0])["data"], "compression": "lz4"}},
            "literal_error",
            ["data", "compression"],
        ),
        (
            {"shape": [3], "dtype": "float64", "data": {"buffer": [[1, 2], [3]], "encoding": "json"}},
            "array_decode_error",
            ["data", "buffer"],
        ),
        (
            {"shape": [3], "dtype": "float64", "data": {"buffer": ["1", "2", "3"], "encoding": "json"}},
            "array_decode_error",
            ["data", "buffer"],
        ),
        (
            {"shape": [3], "dtype": "float64", "data": {"buffer": [1, 2], "encoding": "json"}},
            "array_shape_mismatch",
            ["data", "buffer"],
        ),
        (
            {"shape": [3], "dtype": "float64", "data": {"buffer": {"base64": ""}, "encoding": "json"}},
            "array_decode_error",
            ["data", "buffer"],
        ),
        ([1.0, 2.0, 3.0], "model_type", []),
    ],
)
def test_a_bad_array_is_a_422_that_says_where(saved: AppClient, array: Any, kind: str, where: list[str]) -> None:
    response = saved.post("/tesseract/quad/apply", json={"inputs": {**INPUTS, "x": array}})
    [problem] = detail(response, 422)
    assert problem["type"] == kind
    assert problem["loc"] == ["body", "inputs", "x", *where]
    assert problem["msg"]


def test_bad_requests_list_every_problem(saved: AppClient) -> None:
    response = saved.post(
        "/tesseract/quad/vector_jacobian_product",
        json={
            "inputs": {"x": INPUTS["x"], "y": INPUTS["a"]},
            "vjp_inputs": [],
            "vjp_outputs": ["value", "other"],
            "cotangent_vector": {"value": encoded([1.0, 2.0])},
        },
    )
    problems = {(tuple(problem["loc"]), problem["type"]) for problem in detail(response, 422)}
    assert problems == {
        (("body", "inputs", "y"), "extra_forbidden"),
        (("body", "inputs", "a"), "missing"),
        (("body", "inputs", "b"), "missing"),
        (("body", "vjp_inputs"), "too_short"),
        (("body", "vjp_outputs", 1), "literal_error"),
        (("body", "cotangent_vector", "value", "shape"), "array_shape_mismatch"),
    }
    envelope = detail(saved.post("/tesseract/quad/jacobian", json={"inputs": INPUTS, "jac": []}), 422)
    assert {(tuple(p["loc"]), p["type"]) for p in envelope} == {
        (("body", "jac"), "extra_forbidden"),
        (("body", "jac_inputs"), "missing"),
        (("body", "jac_outputs"), "missing"),
    }
    tangents = saved.post(
        "/tesseract/quad/jacobian_vector_product",
        json={
            "inputs": INPUTS,
            "jvp_inputs": ["x"],
            "jvp_outputs": ["value"],
            "tangent_vector": {"a": encoded([1.0, 2.0, 3.0])},
        },
    )
    assert {(tuple(p["loc"]), p["type"]) for p in detail(tangents, 422)} == {
        (("body", "tangent_vector", "a"), "extra_forbidden"),
        (("body", "tangent_vector", "x"), "missing"),
    }
    abstract = saved.post("/tesseract/quad/abstract_eval", json={"inputs": {"x": {"shape": [2], "dtype": "float64"}}})
    assert {(tuple(p["loc"]), p["type"]) for p in detail(abstract, 422)} == {
        (("body", "inputs", "x", "shape"), "array_shape_mismatch"),
        (("body", "inputs", "a"), "missing"),
        (("body", "inputs", "b"), "missing"),
    }


def test_the_service_refusals_in_tesseracts_shape(saved: AppClient) -> None:
    [malformed] = detail(
        saved.post("/tesseract/quad/apply", content=b'{"inputs": ', headers={"content-type": "application/json"}), 422
    )
    assert malformed["type"] == "json_invalid" and malformed["loc"][0] == "body"
    not_json = detail(
        saved.post("/tesseract/quad/apply", content=b"inputs", headers={"content-type": "text/plain"}), 415
    )
    assert not_json["type"] == "unsupported_media_type"
    unknown = detail(saved.post("/tesseract/nothing/apply", json={"inputs": {}}), 404)
    assert unknown["type"] == "formula_not_found"
    assert detail(saved.get("/tesseract/nothing/openapi.json"), 404)["type"] == "formula_not_found"
    body = {"inputs": INPUTS, "jac_inputs": ["x", "a"], "jac_outputs": ["value"]}  # 6 entries, over 4
    too_large = detail(saved.post("/tesseract/quad/jacobian", json=body), 413)
    assert too_large["type"] == "jacobian_too_large" and too_large["limit"] == 4
    assert detail(saved.get("/tesseract/quad/apply"), 405) == "Method Not Allowed"
    assert detail(saved.post("/tesseract/quad/train"), 404) == "Not Found"
    assert saved.get("/tesseract/quad/health").json() == {"status": "ok"}


def test_the_document_follows_the_formulas_version(saved: AppClient) -> None:
    document = saved.get("/tesseract/quad/openapi.json").json()
    assert document["components"]["schemas"]["ApplyOutputSchema"]["differentiable_arrays"] == {
        "value": {"shape": [], "dtype": "float64"}
    }
    assert document["info"]["version"] == "1"
    formula = {**FORMULA, "expression": "sum(a * x ** 2) + b + 1"}
    assert saved.request("PUT", "/v1/formulas/quad", json=formula).status_code == 200
    assert saved.get("/tesseract/quad/openapi.json").json()["info"]["version"] == "2"  # a new version, a new document


def test_through_a_compute_worker(make_client: ClientFactory, tmp_path: Path) -> None:
    client = make_client(compute_processes=1, data_dir=str(tmp_path))
    assert client.request("PUT", "/v1/formulas/quad", json=FORMULA).status_code == 201
    answer = client.post("/tesseract/quad/apply", json={"inputs": INPUTS})
    assert answer.status_code == 200, answer.text
    assert decoded(answer.json()["value"]) == 23.5
    assert detail(client.post("/tesseract/quad/apply", json={"inputs": {}}), 422)
    assert detail(client.post("/tesseract/other/apply", json={"inputs": {}}), 404)["type"] == "formula_not_found"
    assert detail(client.post("/tesseract/quad/apply", json={"inputs": INPUTS}, headers={"accept": "text/csv"}), 406)


def test_api_keys_and_the_body_limit_in_tesseracts_shape(make_client: ClientFactory, tmp_path: Path) -> None:
    client = make_client(compute_processes=0, data_dir=str(tmp_path), api_keys="k1", max_body_bytes=2_000)
    bearer = {"authorization": "Bearer k1"}
    assert client.request("PUT", "/v1/formulas/quad", json=FORMULA, headers=bearer).status_code == 201
    refused = client.post("/tesseract/quad/apply", json={"inputs": INPUTS})
    assert detail(refused, 401)["type"] == "unauthorized"
    assert refused.headers["www-authenticate"] == "Bearer"
    assert detail(client.get("/tesseract/quad/health", auth=("any", "wrong")), 401)["type"] == "unauthorized"
    assert client.get("/tesseract/quad/health", headers=bearer).json() == {"status": "ok"}
    # HTTP Basic with the key as the password: what Tesseract.from_url("http://user:k1@host/...") sends.
    assert client.post("/tesseract/quad/apply", json={"inputs": INPUTS}, auth=("user", "k1")).status_code == 200
    big = {"inputs": {**INPUTS, "x": {**INPUTS["x"], "pad": "x" * 3_000}}}
    assert detail(client.post("/tesseract/quad/apply", json=big, headers=bearer), 413)["type"] == "body_too_large"
    assert detail(client.get("/tesseract/quad/", headers=bearer), 404) == "Not Found"
    assert client.get("/tesseract", headers=bearer).json()["error"]["type"] == "not_found"  # not a Tesseract's path


def test_a_fault_of_the_service_is_a_logged_500(saved: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> Any:
        raise TypeError("a bug")

    monkeypatch.setattr("service.compute.expressions.component.Component.apply", broken)
    response = saved.post("/tesseract/quad/apply", json={"inputs": INPUTS})
    fault = detail(response, 500)
    assert fault["type"] == "internal_error"
    assert fault["request_id"] == response.headers["x-request-id"]
