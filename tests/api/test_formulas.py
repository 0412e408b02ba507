"""Saved formulas: CRUD with versions and ETags, limits, names, formulas refused before they are
saved, derivatives against torch and /v1/differentiate, persistence across restarts (SQLite),
and a database that the small-request path never opens."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from service.compute.expressions.language import Limits
from service.compute.expressions.saved import saved_program
from service.config import Settings
from service.main import create_app
from service.store import FormulaInput, FormulaStore, SavedFormula
from tests.conftest import AppClient, ClientFactory
from tests.helpers import assert_error, to_base64

NET = "h = tanh(W @ x + b)\nsum(h ** 2) + 0.5 * sum(x ** 2)"
NET_INPUTS = {"x": {"shape": [3], "dtype": "float64"}, "W": {"shape": [2, 3], "dtype": "float64"}, "b": {"shape": [2]}}
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"
"""A database nothing listens on: whatever touches it fails."""


@pytest.fixture
def client(make_client: ClientFactory, tmp_path: Path) -> AppClient:
    return make_client(data_dir=str(tmp_path), compute_processes=0)


def put(client: AppClient, name: str, body: dict[str, Any], **headers: str) -> Any:
    return client.request("PUT", f"/v1/formulas/{name}", json=body, headers=headers)


def quoted(etag: str) -> str:
    return f'"{etag}"'


def test_create_read_replace_list_delete(client: AppClient) -> None:
    created = put(client, "net", {"expression": NET, "inputs": NET_INPUTS, "description": "a layer"})
    assert created.status_code == 201, created.text
    first = created.json()
    assert first["version"] == 1 and first["inputs"]["b"] == {"shape": [2], "dtype": "float32"}
    assert list(first["inputs"]) == ["x", "W", "b"]  # declaration order
    assert created.headers["etag"] == quoted(first["etag"]) and created.headers["location"] == "/v1/formulas/net"
    got = client.get("/v1/formulas/net")
    assert got.status_code == 200 and got.json() == first and got.headers["etag"] == quoted(first["etag"])
    assert client.get("/v1/formulas/net", headers={"if-none-match": quoted(first["etag"])}).status_code == 304

    replaced = put(client, "net", {"expression": "sum(x)", "inputs": {"x": {"shape": [3]}}})
    assert replaced.status_code == 200, replaced.text
    second = replaced.json()
    assert second["version"] == 2 and second["etag"] != first["etag"] and second["description"] is None
    assert second["created_at"] == first["created_at"] and second["updated_at"] >= first["updated_at"]
    put(client, "another", {"expression": "sum(y)", "inputs": {"y": {"shape": [1]}}})
    listed = client.get("/v1/formulas").json()["formulas"]
    assert [item["name"] for item in listed] == ["another", "net"] and listed[1] == second

    not_allowed = client.request("PATCH", "/v1/formulas/net")
    assert_error(not_allowed, 405, "method_not_allowed")
    assert not_allowed.headers["allow"] == "DELETE, GET, PUT"  # every route's methods at this path

    deleted = client.request("DELETE", "/v1/formulas/net")
    assert deleted.status_code == 204 and deleted.content == b""
    assert_error(client.get("/v1/formulas/net"), 404, "formula_not_found")
    assert_error(client.request("DELETE", "/v1/formulas/net"), 404, "formula_not_found")
    again = put(client, "net", {"expression": "sum(x)", "inputs": {"x": {"shape": [3]}}})
    assert again.status_code == 201 and again.json()["version"] == 1 and again.json()["etag"] != first["etag"]


def test_if_match_and_if_none_match(client: AppClient) -> None:
    body = {"expression": "sum(x)", "inputs": {"x": {"shape": [2]}}}
    assert_error(put(client, "f", body, **{"if-match": '"1-0000"'}), 412, "precondition_failed")  # absent
    etag = put(client, "f", body, **{"if-none-match": "*"}).json()["etag"]
    assert_error(put(client, "f", body, **{"if-none-match": "*"}), 412, "formula_exists")
    assert_error(put(client, "f", body, **{"if-match": '"stale"'}), 412, "precondition_failed")
    updated = put(client, "f", body, **{"if-match": f'"other", {quoted(etag)}'})
    assert updated.status_code == 200 and updated.json()["version"] == 2
    stale = assert_error(put(client, "f", body, **{"if-match": quoted(etag)}), 412, "precondition_failed")
    assert stale["etag"] == updated.json()["etag"]  # the error says what to read
    assert put(client, "f", body, **{"if-match": "*"}).json()["version"] == 3
    assert put(client, "f", body, **{"if-match": ""}).json()["version"] == 4  # empty: as if absent
    assert_error(
        client.request("DELETE", "/v1/formulas/f", headers={"if-match": quoted(etag)}), 412, "precondition_failed"
    )
    current = client.get("/v1/formulas/f").headers["etag"]
    assert client.request("DELETE", "/v1/formulas/f", headers={"if-match": current}).status_code == 204


@pytest.mark.parametrize(
    ("name", "status", "error_type"),
    [
        ("a" * 65, 400, "invalid_name"),
        ("-starts-with-dash", 400, "invalid_name"),
        ("has space", 400, "invalid_name"),
        ("dollar$", 400, "invalid_name"),
        ("sigmoid", 400, "invalid_name"),  # an activation's name: a model name in /v2 already
        ("cross_entropy", 400, "invalid_name"),  # a loss's
    ],
)
def test_bad_names_are_refused(client: AppClient, name: str, status: int, error_type: str) -> None:
    error = assert_error(
        put(client, name, {"expression": "sum(x)", "inputs": {"x": {"shape": [1]}}}), status, error_type
    )
    assert "name" in error["message"]
    if name not in {"sigmoid", "cross_entropy"}:
        assert_error(client.get(f"/v1/formulas/{name}"), 400, "invalid_name")
        assert_error(client.post(f"/v1/formulas/{name}/differentiate", json={"inputs": {}}), 400, "invalid_name")
    assert client.get("/v1/formulas").json() == {"formulas": []}


def test_good_names(client: AppClient) -> None:
    for name in ("a", "A" * 64, "v1.2-beta_3", "0lead"):
        assert put(client, name, {"expression": "sum(x)", "inputs": {"x": {"shape": [1]}}}).status_code == 201


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        ({"expression": "x @ x", "inputs": {"x": {"shape": [3, 2]}}}, 400, "computation_failed"),  # shapes do not fit
        ({"expression": "sum(y)", "inputs": {"x": {"shape": [3]}}}, 400, "unknown_name"),
        ({"expression": "__import__('os')", "inputs": {}}, 400, "unknown_function"),
        ({"expression": "x.__class__", "inputs": {"x": {"shape": [1]}}}, 400, "invalid_expression"),
        ({"expression": "sum(x", "inputs": {"x": {"shape": [1]}}}, 400, "invalid_expression"),
        ({"expression": "sum(x)", "inputs": {"x": {"shape": [0]}}}, 400, "invalid_shape"),
        ({"expression": "sum(x)", "inputs": {"x": {"shape": [1] * 17}}}, 400, "invalid_shape"),
        ({"expression": "exp", "inputs": {"exp": {"shape": [1]}}}, 400, "invalid_input_name"),
        ({"expression": "sum(x)", "inputs": {"x": {"shape": [1], "dtype": "int64"}}}, 422, "validation_error"),
        ({"expression": "sum(x)", "inputs": {"x": {"shape": [1.5]}}}, 422, "validation_error"),
        ({"expression": "x > 0", "inputs": {"x": {"shape": [2]}}}, 400, "not_floating"),  # no derivatives
        ({"inputs": {}}, 422, "validation_error"),
    ],
)
def test_a_refused_formula_is_not_saved(client: AppClient, body: dict[str, Any], status: int, error_type: str) -> None:
    assert_error(put(client, "f", body), status, error_type)
    assert_error(client.get("/v1/formulas/f"), 404, "formula_not_found")


def test_a_refused_replacement_keeps_the_old_version(client: AppClient) -> None:
    saved = put(client, "f", {"expression": "sum(x)", "inputs": {"x": {"shape": [2]}}}).json()
    refused = put(client, "f", {"expression": "x @ x", "inputs": {"x": {"shape": [2, 3]}}})
    assert "[2, 3] X [2, 3]" in assert_error(refused, 400, "computation_failed")["message"]
    assert client.get("/v1/formulas/f").json() == saved


def test_limits(make_client: ClientFactory, tmp_path: Path) -> None:
    client = make_client(
        data_dir=str(tmp_path),
        compute_processes=0,
        max_formulas=2,
        formula_max_inputs=2,
        formula_description_max_length=10,
        expression_max_length=50,
        max_elements=100,
    )
    body = {"expression": "sum(x)", "inputs": {"x": {"shape": [2]}}}
    assert put(client, "one", body).status_code == 201 and put(client, "two", body).status_code == 201
    error = assert_error(put(client, "three", body), 413, "too_many_formulas")
    assert error["limit"] == 2
    assert put(client, "two", body).status_code == 200  # replacing one is no new one
    client.request("DELETE", "/v1/formulas/two")
    assert put(client, "three", body).status_code == 201
    assert_error(put(client, "one", {**body, "description": "x" * 11}), 413, "description_too_long")
    assert_error(put(client, "one", {**body, "expression": "x" + " + x" * 20}), 413, "expression_too_long")
    three = {"expression": "a", "inputs": {name: {"shape": [1]} for name in "abc"}}
    assert_error(put(client, "one", three), 413, "too_many_inputs")
    assert_error(
        put(client, "one", {"expression": "sum(x)", "inputs": {"x": {"shape": [11, 10]}}}), 413, "too_many_elements"
    )
    assert client.get("/v1/formulas/one").json()["version"] == 1  # nothing refused was saved


def differentiate(client: AppClient, name: str, **body: Any) -> Any:
    return client.post(f"/v1/formulas/{name}/differentiate", json=body)


POINT = {"x": [0.5, -1.0, 2.0], "W": [[0.1, 0.2, 0.3], [-0.3, 0.2, 0.1]], "b": [0.25, -0.5]}


def test_derivatives_match_torch_in_float64(client: AppClient) -> None:
    inputs = {**NET_INPUTS, "b": {"shape": [2], "dtype": "float64"}}
    assert put(client, "net", {"expression": NET, "inputs": inputs}).status_code == 201
    answer = differentiate(client, "net", inputs=POINT, derivatives=["grad", "hessian"])
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["meta"]["dtype"] == "float64" and answer.headers["etag"]

    def net(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(w @ x + b) ** 2).sum() + 0.5 * (x**2).sum()

    point = tuple(torch.tensor(POINT[name], dtype=torch.float64, requires_grad=True) for name in ("x", "W", "b"))
    value = net(*point)
    grads = torch.autograd.grad(value, point)
    hessian = torch.autograd.functional.hessian(net, tuple(p.detach() for p in point))
    assert result["value"] == pytest.approx(value.item(), rel=1e-12)
    for name, grad in zip(("x", "W", "b"), grads, strict=True):
        torch.testing.assert_close(
            torch.tensor(result["grad"][name], dtype=torch.float64), grad, rtol=1e-12, atol=1e-12
        )
    block = torch.tensor(result["hessian"]["x"]["W"], dtype=torch.float64)
    torch.testing.assert_close(block, hessian[0][1], rtol=1e-12, atol=1e-12)


def test_same_answers_as_v1_differentiate(client: AppClient) -> None:
    put(client, "net", {"expression": NET, "inputs": {**NET_INPUTS, "b": {"shape": [2], "dtype": "float64"}}})
    cases: list[dict[str, Any]] = [
        {"derivatives": ["grad", "jacobian"]},
        {"derivatives": ["jvp", "hvp"], "tangents": {"x": [1.0, 0.0, 0.5]}, "wrt": ["x"]},
        {"dry_run": True, "derivatives": ["hessian"]},
    ]
    for case in cases:
        saved = differentiate(client, "net", inputs=POINT, **case)
        direct = client.post("/v1/differentiate", json={"expression": NET, "inputs": POINT, "dtype": "float64", **case})
        assert saved.status_code == direct.status_code == 200, saved.text
        saved_body, direct_body = saved.json(), direct.json()
        saved_body.pop("meta"), direct_body.pop("meta")
        assert saved_body == direct_body


def test_a_batch_of_points(client: AppClient) -> None:
    put(client, "sq", {"expression": "sum(x ** 2)", "inputs": {"x": {"shape": [2], "dtype": "float64"}}})
    answer = differentiate(client, "sq", inputs={"x": [[1.0, 2.0], [3.0, 4.0]]}, batch=["x"])
    assert answer.status_code == 200, answer.text
    assert answer.json()["value"] == [5.0, 25.0] and answer.json()["grad"] == {"x": [[2.0, 4.0], [6.0, 8.0]]}


def test_inputs_are_checked_against_the_saved_ones(client: AppClient) -> None:
    put(client, "net", {"expression": NET, "inputs": NET_INPUTS})
    wrong: list[tuple[dict[str, Any], str]] = [
        ({"inputs": {"x": POINT["x"], "W": POINT["W"]}}, "missing_input"),
        ({"inputs": {**POINT, "z": [1.0]}}, "unknown_name"),
        ({"inputs": {**POINT, "x": [1.0, 2.0]}}, "shape_mismatch"),
        ({"inputs": {**POINT, "x": to_base64(torch.ones(3, dtype=torch.float32))}}, "dtype_mismatch"),
        ({"inputs": POINT, "dtype": "float32"}, "dtype_mismatch"),
        ({"inputs": {**POINT, "x": [[0.5, -1.0, 2.0]]}, "batch": ["W"]}, "shape_mismatch"),
    ]
    for body, error_type in wrong:
        assert_error(differentiate(client, "net", **body), 400, error_type)
    assert_error(differentiate(client, "none", inputs={}), 404, "formula_not_found")
    good = differentiate(client, "net", inputs={**POINT, "x": to_base64(torch.ones(3, dtype=torch.float64))})
    assert good.status_code == 200, good.text


def test_a_formula_deleted_while_in_use_finishes_its_request(make_client: ClientFactory, tmp_path: Path) -> None:
    client = make_client(data_dir=str(tmp_path), compute_processes=0)
    put(client, "sq", {"expression": "sum(x ** 2)", "inputs": {"x": {"shape": [2]}}})
    store = client.app.formulas
    read = store.get

    def read_then_deleted(name: str) -> SavedFormula | None:
        formula = read(name)
        store.delete(name)  # as another client would, between the read and the computation
        return formula

    store.get = read_then_deleted  # type: ignore[method-assign]
    answer = differentiate(client, "sq", inputs={"x": [1.0, 2.0]})
    assert answer.status_code == 200 and answer.json()["grad"] == {"x": [2.0, 4.0]}
    store.get = read  # type: ignore[method-assign]
    assert_error(client.get("/v1/formulas/sq"), 404, "formula_not_found")


@pytest.mark.parametrize("processes", [0, 1])
def test_formulas_survive_a_restart(make_client: ClientFactory, tmp_path: Path, processes: int) -> None:
    first = AppClient(create_app(Settings(data_dir=str(tmp_path), compute_processes=processes)))
    saved = put(first, "sq", {"expression": "sum(x ** 3)", "inputs": {"x": {"shape": [2], "dtype": "float64"}}}).json()
    answer = differentiate(first, "sq", inputs={"x": [1.0, 2.0]})
    assert answer.status_code == 200 and answer.json()["grad"] == {"x": [3.0, 12.0]}
    first.close()
    assert (tmp_path / "gradient.db").exists()
    second = make_client(data_dir=str(tmp_path), compute_processes=processes)
    assert second.get("/v1/formulas/sq").json() == saved
    assert differentiate(second, "sq", inputs={"x": [1.0, 2.0]}).json()["grad"] == {"x": [3.0, 12.0]}


@pytest.mark.parametrize("processes", [0, 1])
def test_the_small_request_path_never_opens_the_database(make_client: ClientFactory, processes: int) -> None:
    client = make_client(database_url=UNREACHABLE, compute_processes=processes)
    assert client.post("/v1/activations/sigmoid", json={"input": [0.0, 1.0]}).status_code == 200
    assert client.post("/v1/losses/mse", json={"input": [0.0, 1.0], "target": [1.0, 1.0]}).status_code == 200
    assert client.post("/v1/differentiate", json={"expression": "sum(x)", "inputs": {"x": [1.0]}}).status_code == 200
    assert client.get("/v1/info").status_code == 200 and client.get("/readyz").status_code == 200
    assert not client.app.formulas.opened
    assert_error(client.get("/v1/formulas"), 503, "database_unavailable")  # the one that does, fails cleanly


def test_programs_are_cached_by_version(tmp_path: Path) -> None:
    store = FormulaStore(f"sqlite:///{tmp_path / 'f.db'}")
    spec = {"x": FormulaInput((2,), "float64")}
    first, _ = store.put("f", "sum(x ** 2)", spec)
    args = (torch.float64, torch.device("cpu"), Limits(), 1000)
    program = saved_program(first, *args)
    assert saved_program(store.get("f"), *args) is program  # type: ignore[arg-type]
    second, _ = store.put("f", "sum(x ** 3)", spec)
    assert saved_program(second, *args) is not program
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert saved_program(second, *args)({"x": x}).item() == 9.0
    store.delete("f")
    recreated, _ = store.put("f", "sum(x)", spec)  # version 1 again: a new ETag tells it apart
    assert recreated.version == first.version and saved_program(recreated, *args)({"x": x}).item() == 3.0
    store.close()


def test_concurrent_writers_in_threads_lose_nothing(tmp_path: Path) -> None:
    store = FormulaStore(f"sqlite:///{tmp_path / 'f.db'}")
    spec = {"x": FormulaInput((1,), "float32")}

    def write(i: int) -> int:
        return store.put("shared", f"sum(x) + {i}", spec)[0].version

    with ThreadPoolExecutor(8) as pool:
        versions = sorted(pool.map(write, range(80)))
    assert versions == list(range(1, 81))
    assert store.get("shared").version == 80  # type: ignore[union-attr]
    store.close()


def test_the_openapi_documents_the_routes(client: AppClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    one = paths["/v1/formulas/{name}"]
    assert {"get", "put", "delete"} <= set(one)
    assert {"200", "201", "412", "400", "413"} <= set(one["put"]["responses"])
    assert "412" in one["delete"]["responses"] and "404" in one["get"]["responses"]
    post = paths["/v1/formulas/{name}/differentiate"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("FormulaDifferentiateRequest")


def test_browsers_may_write_formulas_across_origins(make_client: ClientFactory, tmp_path: Path) -> None:
    client = make_client(data_dir=str(tmp_path), compute_processes=0, cors_origins="https://play.example")
    preflight = {
        "origin": "https://play.example",
        "access-control-request-method": "PUT",
        "access-control-request-headers": "content-type, if-match",
    }
    allowed = client.request("OPTIONS", "/v1/formulas/f", headers=preflight)
    assert allowed.status_code == 200 and "PUT" in allowed.headers["access-control-allow-methods"]
    saved = put(client, "f", {"expression": "sum(x)", "inputs": {"x": {"shape": [1]}}}, origin="https://play.example")
    assert "etag" in saved.headers["access-control-expose-headers"].lower()
