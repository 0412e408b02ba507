"""The obvious FastAPI handlers the benchmarks compare against.

``/v1/activations/sigmoid``: a pydantic ``list[float]`` body, ``torch.tensor(list)``,
``backward``, ``.tolist()`` and FastAPI's default response for the returned dict.
``/typed/sigmoid``: the same with a response model (a stronger baseline, reported beside it).
``/echo``: returns its pydantic body.
``/himmelblau/derivatives``: value, gradient and Hessian of Himmelblau's function at a list of
points, one point at a time with torch.autograd.
"""

from __future__ import annotations

import torch
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class SigmoidRequest(BaseModel):
    input: list[float]


class SigmoidResponse(BaseModel):
    output: list[float]
    grad: list[float]


@app.post("/v1/activations/sigmoid")
def sigmoid(request: SigmoidRequest):  # type: ignore[no-untyped-def]  # the obvious handler
    x = torch.tensor(request.input, requires_grad=True)
    y = torch.sigmoid(x)
    y.backward(torch.ones_like(y))
    assert x.grad is not None
    return {"output": y.tolist(), "grad": x.grad.tolist()}


@app.post("/typed/sigmoid")
def typed_sigmoid(request: SigmoidRequest) -> SigmoidResponse:
    """The same with a declared response model, which FastAPI serialises in pydantic-core."""
    x = torch.tensor(request.input, requires_grad=True)
    y = torch.sigmoid(x)
    y.backward(torch.ones_like(y))
    assert x.grad is not None
    return SigmoidResponse(output=y.tolist(), grad=x.grad.tolist())


@app.post("/echo")
async def echo(request: SigmoidRequest) -> SigmoidRequest:
    return request


class PointsRequest(BaseModel):
    points: list[list[float]]


def himmelblau(x: torch.Tensor) -> torch.Tensor:
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


@app.post("/himmelblau/derivatives")
def himmelblau_derivatives(request: PointsRequest):  # type: ignore[no-untyped-def]  # the obvious handler
    """Value, gradient and Hessian of Himmelblau's function at each point, one point at a time."""
    values, grads, hessians = [], [], []
    for point in request.points:
        x = torch.tensor(point, dtype=torch.float64, requires_grad=True)
        y = himmelblau(x)
        (grad,) = torch.autograd.grad(y, x)
        values.append(y.item())
        grads.append(grad.tolist())
        hessians.append(torch.autograd.functional.hessian(himmelblau, x.detach()).tolist())
    return {"value": values, "grad": grads, "hessian": hessians}
