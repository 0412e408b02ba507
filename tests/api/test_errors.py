"""Bad input is a 400, a bug is a 500: torch's refusals of the client's input become
``computation_failed``, while a fault of the service's own code (injected here) is a logged 500
with the request id, never dressed up as the client's fault."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch

import service.compute.expressions.differentiate
from service.compute.ops import activations as activations_module
from service.compute.ops import losses as losses_module
from service.compute.runtime import is_torch_refusal, torch_errors
from service.errors import InvalidInput
from tests.conftest import AppClient, ClientFactory
from tests.helpers import assert_error


def _raised(action: Callable[[], Any]) -> BaseException:
    try:
        action()
    except BaseException as exc:  # the test inspects whatever was raised
        return exc
    raise AssertionError("nothing was raised")


def _our_raise(kind: type[BaseException]) -> None:
    raise kind("a fault of ours")


@pytest.mark.parametrize(
    ("action", "refusal"),
    [
        pytest.param(lambda: torch.ones(2) @ torch.ones(3), True, id="c++-runtime-error"),
        pytest.param(lambda: torch.ones(2)[5], True, id="c++-index-error"),
        pytest.param(lambda: torch.ones(2).sum(dim=3), True, id="dim-out-of-range"),
        pytest.param(lambda: torch.broadcast_shapes((2,), (3,)), True, id="torch-python-code"),
        pytest.param(lambda: torch.nn.functional.softmax(torch.ones(2), dim=4), True, id="torch-functional"),
        pytest.param(lambda: torch.softmax(torch.tensor([1, 2]), 0), True, id="kernel-lacks-dtype"),
        pytest.param(lambda: _our_raise(ValueError), False, id="raise-value-error"),
        pytest.param(lambda: _our_raise(RuntimeError), False, id="raise-runtime-error"),
        pytest.param(lambda: _our_raise(NotImplementedError), False, id="not-implemented"),
        pytest.param(lambda: len(1), False, id="type-error"),  # type: ignore[arg-type]
        pytest.param(lambda: dict[str, int]()["key"], False, id="key-error"),
        pytest.param(lambda: 1 / 0, False, id="zero-division"),
    ],
)
def test_only_torchs_refusals_count_as_bad_input(action: Callable[[], Any], refusal: bool) -> None:
    assert is_torch_refusal(_raised(action)) is refusal


def test_a_raise_in_the_service_package_is_not_a_refusal() -> None:
    """The raise-site rule on a frame of the service's own: the registry's ValueError."""
    registry = activations_module.ACTIVATIONS
    exc = _raised(lambda: registry.register(registry.get("sigmoid")))
    assert isinstance(exc, ValueError)
    assert not is_torch_refusal(exc)


def test_torch_errors_turns_refusals_into_400_and_lets_bugs_through() -> None:
    with pytest.raises(InvalidInput) as caught, torch_errors("the test"):
        torch.ones(2) @ torch.ones(3)
    assert caught.value.error_type == "computation_failed"
    assert "the test failed on this input" in caught.value.message
    for kind in (TypeError, ValueError, RuntimeError, KeyError):
        with pytest.raises(kind), torch_errors("the test"):
            _our_raise(kind)


def test_torch_refusal_of_the_clients_input_is_400(client: AppClient) -> None:
    response = client.post(
        "/v1/differentiate", json={"expression": "sum(x @ y)", "inputs": {"x": [1.0, 2.0], "y": [1.0]}}
    )
    error = assert_error(response, 400, "computation_failed")
    assert "the expression failed on this input" in error["message"]


@pytest.mark.parametrize("fault", [TypeError, ValueError, RuntimeError, KeyError, AttributeError])
def test_a_fault_in_our_code_is_a_logged_500_with_the_request_id(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fault: type
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise fault("injected fault")

    monkeypatch.setattr(service.compute.expressions.differentiate, "value_and_vjp_many", broken)
    client = make_client(compute_processes=0)
    with caplog.at_level(logging.ERROR, logger="service.errors"):
        response = client.post(
            "/v1/differentiate",
            json={"expression": "sum(x ** 2)", "inputs": {"x": [1.0, 2.0]}},
            headers={"X-Request-ID": "fault-under-test"},
        )
    error = assert_error(response, 500, "internal_error")
    assert error["request_id"] == "fault-under-test"
    assert response.headers["x-request-id"] == "fault-under-test"
    logged = [record for record in caplog.records if getattr(record, "request_id", None) == "fault-under-test"]
    assert logged, caplog.text
    assert logged[0].exc_info is not None and logged[0].exc_info[0] is fault


@pytest.mark.parametrize(
    ("path", "body", "module", "name"),
    [
        ("/v1/activations/softsign", {"input": [1.0, -2.0]}, activations_module, "value_and_vjp"),
        ("/v1/losses/mse", {"input": [1.0], "target": [0.0]}, losses_module, "checked_target"),
    ],
)
def test_faults_in_activations_and_losses_are_500(
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    body: dict[str, Any],
    module: Any,
    name: str,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("injected fault")

    monkeypatch.setattr(module, name, broken)
    client = make_client(compute_processes=0)
    assert_error(client.post(path, json=body), 500, "internal_error")


def test_a_fault_in_an_optimisation_is_500(make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.compute.optimisation import engine as optimize_module

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("injected fault")

    monkeypatch.setattr(optimize_module, "_run_group", broken)
    client = make_client(compute_processes=0)
    body = {"objective": "himmelblau", "x0": [1.0, 0.0], "steps": 5}
    assert_error(client.post("/v1/optimize", json=body), 500, "internal_error")
