"""GET /v1/losses and POST /v1/losses/{name}."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError

from service.api.endpoints import ComputeContext, accept, validate_params
from service.api.openapi import AUTH_RESPONSES, compute_post, name_parameter
from service.api.responses import JSONBytesResponse
from service.api.schemas import LossCatalog, LossInfo, LossRequest, LossResponse, params_schema
from service.compute.ops.losses import LOSSES, evaluate_loss

router = APIRouter(prefix="/v1/losses", tags=["losses"])

LossName = Annotated[str, name_parameter(LOSSES)]


@router.get("", summary="List the losses, their formulas, parameters and targets", responses=AUTH_RESPONSES)
def list_losses() -> LossCatalog:
    return LossCatalog(
        losses=[
            LossInfo(
                name=spec.name,
                formula=spec.formula,
                params=params_schema(spec),
                target=spec.target,
                weight=spec.weight,
            )
            for spec in LOSSES
        ]
    )


@compute_post(
    router,
    "/{name}",
    LossRequest,
    LossResponse,
    summary="Evaluate a loss with its gradients w.r.t. input, target and weight",
)
async def loss(name: LossName, request: Request) -> JSONBytesResponse:
    call = await accept(request, LossRequest)
    body = call.body
    spec = LOSSES.get(name)
    if body.target is None and spec.target != "none":  # required by this loss: a missing field
        raise RequestValidationError([{"type": "missing", "loc": ("body", "target"), "msg": "Field required"}])
    params = validate_params(spec, body.params)

    def compute(ctx: ComputeContext) -> dict[str, Any]:
        # Class indices are read in float64, exact up to 2**53, then checked and made int64.
        target_dtype = ctx.dtype if spec.target == "float" else torch.float64
        result = evaluate_loss(
            spec,
            ctx.tensor(body.input, "input"),
            ctx.optional_tensor(body.target, "target", target_dtype),
            ctx.optional_tensor(body.weight, "weight"),
            ctx.tensor_params(spec, params),
            grad_output=ctx.optional_tensor(body.grad_output, "grad_output"),
        )
        return {"loss": ctx.wire(result.loss), "grad": {key: ctx.wire(grad) for key, grad in result.grads.items()}}

    return await call.respond(compute, op=f"loss/{name}")
