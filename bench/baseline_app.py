"""The obvious FastAPI handlers the benchmarks compare against.

``/v1/activations/sigmoid``: a pydantic ``list[float]`` body, ``torch.tensor(list)``,
``backward``, ``.tolist()`` and FastAPI's default response for the returned dict.
``/typed/sigmoid``: the same with a response model (a stronger baseline, reported beside it).
``/echo``: returns its pydantic body.
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
