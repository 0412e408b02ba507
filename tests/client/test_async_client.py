"""The async client against the real service: the same methods as coroutines, many concurrent
calls over a bounded pool of connections, async event streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import torch
from gradient_client import (
    AsyncClient,
    AsyncEventStream,
    ConnectionFailedError,
    DifferentiateResult,
    DryRunResult,
    NotFoundError,
    ProgressEvent,
    ResultEvent,
    TensorShape,
)

from bench.servers import free_port
from tests.client.test_client import HIMMELBLAU, finished_optimisations, himmelblau

T = TypeVar("T")


def run(test: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(test())


def test_every_method_as_a_coroutine(service_url: str) -> None:
    async def main() -> None:
        async with AsyncClient(service_url) as client:
            activation = await client.activation("tanh", np.linspace(-1, 1, 20))
            np.testing.assert_allclose(activation.output, np.tanh(np.linspace(-1, 1, 20)), rtol=1e-12)
            loss = await client.loss("cross_entropy", [[1.0, 2.0, 0.5, -1.0]], [3])
            expected = torch.nn.functional.cross_entropy(torch.tensor([[1.0, 2.0, 0.5, -1.0]]), torch.tensor([3]))
            np.testing.assert_allclose(loss.loss, expected.item(), rtol=1e-6)
            result = await client.differentiate(HIMMELBLAU, {"x": [3.0, 2.0]}, derivatives=["hessian"])
            assert result.hessian is not None
            np.testing.assert_array_equal(result.hessian["x"]["x"], [[74.0, 20.0], [20.0, 34.0]])
            dry = await client.differentiate(HIMMELBLAU, {"x": [3.0, 2.0]}, derivatives=["hessian"], dry_run=True)
            assert isinstance(dry, DryRunResult) and dry.value == TensorShape((), "float32")
            optimized = await client.optimize("himmelblau", x0=[1.0, 0.0], optimizer={"name": "adam", "lr": 0.05})
            assert optimized.runs is not None
            np.testing.assert_allclose(optimized.runs[0].x, [3.0, 2.0], atol=1e-4)
            grid = await client.landscape("himmelblau", [-6, 6], [-6, 6], resolution=11)
            assert grid.z.shape == (11, 11) and grid.z[5, 5] == 170.0  # f(0, 0)
            catalogs = await asyncio.gather(
                client.activations(), client.losses(), client.objectives(), client.optimizers()
            )
            assert all(len(catalog) > 5 for catalog in catalogs)
            assert "operators" in await client.functions()
            assert (await client.info())["name"] == "gradient-service"
            with pytest.raises(NotFoundError) as unknown:
                await client.loss("nope", [1.0], [1.0])
            assert unknown.value.type == "unknown_loss" and unknown.value.request_id

    run(main)


def test_concurrent_calls_share_a_bounded_pool_of_connections(service_url: str) -> None:
    points = np.random.default_rng(3).uniform(-4, 4, (20, 2))
    connections: set[tuple[str, int]] = set()

    async def remember_connection(response: httpx.Response) -> None:
        connections.add(response.extensions["network_stream"].get_extra_info("client_addr"))

    async def main() -> list[DifferentiateResult]:
        async with AsyncClient(service_url, max_connections=4) as client:
            client.http.event_hooks["response"].append(remember_connection)
            calls = [
                client.differentiate(HIMMELBLAU, {"x": point}, derivatives=["grad", "hessian"]) for point in points
            ]
            answers: list[DifferentiateResult] = await asyncio.gather(*calls)
            return answers

    results = run(main)
    for point, result in zip(points, results, strict=True):
        x = torch.from_numpy(point)
        np.testing.assert_allclose(result.value, himmelblau(x).item(), rtol=1e-12)
        assert result.grad is not None and result.hessian is not None
        np.testing.assert_allclose(result.grad["x"], torch.func.grad(himmelblau)(x).numpy(), rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(result.hessian["x"]["x"], torch.func.hessian(himmelblau)(x).numpy(), rtol=1e-12)
    assert 1 <= len(connections) <= 4, connections


def test_an_async_stream_to_its_result(service_url: str) -> None:
    async def main() -> list[Any]:
        async with AsyncClient(service_url) as client:
            stream = client.optimize_stream("himmelblau", starts=[[1, 0], [-4, 0]], steps=300, record_every=100)
            events = [event async for event in stream]
            assert stream.result is not None
            return events

    events = run(main)
    assert [event.kind for event in events] == ["progress"] * 4 + ["result"]
    assert [event.step for event in events if isinstance(event, ProgressEvent)] == [0, 100, 200, 300]
    last = events[-1]
    assert isinstance(last, ResultEvent) and last.result.runs is not None and len(last.result.runs) == 2


@pytest.mark.parametrize("leave", ["break", "async with"])
def test_leaving_an_async_stream_early_stops_the_runs(service_url: str, leave: str) -> None:
    before = finished_optimisations(service_url)
    long_run: dict[str, Any] = {"x0": [0.0, 0.0], "steps": 5_000_000, "record_every": 500}

    async def read_a_little(stream: AsyncEventStream) -> None:
        async for event in stream:
            assert isinstance(event, ProgressEvent)
            if event.step >= 1000:
                assert finished_optimisations(service_url) == before  # the long run is under way
                break

    async def main() -> float:
        async with AsyncClient(service_url) as client:
            if leave == "break":  # closed once garbage, by asyncio's async generator hooks
                await read_a_little(client.optimize_stream("rosenbrock", **long_run))
            else:  # closed on leaving the block
                async with client.optimize_stream("rosenbrock", **long_run) as stream:
                    await read_a_little(stream)
            left = time.monotonic()
            short = await client.optimize("sphere", x0=[1.0], steps=1)  # waits for the only compute slot
            assert short.runs is not None and short.runs[0].steps == 1
            return time.monotonic() - left

    waited = run(main)
    assert finished_optimisations(service_url) == before + 2
    assert waited < 30  # the long run would have held the slot for the 60 s budget


def test_an_unreachable_service(service_url: str) -> None:
    async def main() -> None:
        async with AsyncClient(f"http://127.0.0.1:{free_port()}", retries=1) as client:
            with pytest.raises(ConnectionFailedError) as failed:
                await client.info()
            assert isinstance(failed.value.__cause__, httpx.ConnectError) and "2 attempts" in failed.value.message

    run(main)
