"""GET /v1/activations and POST /v1/activations/{name}."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request

from service.api.endpoints import ComputeContext, accept, validate_params
from service.api.openapi import AUTH_RESPONSES, compute_post, name_parameter
from service.api.responses import JSONBytesResponse
from service.api.schemas import (
    ActivationCatalog,
    ActivationInfo,
    ActivationRequest,
    ActivationResponse,
    params_schema,
)
from service.compute.ops.activations import ACTIVATIONS, evaluate_activation

router = APIRouter(prefix="/v1/activations", tags=["activations"])

ActivationName = Annotated[str, name_parameter(ACTIVATIONS)]


@router.get("", summary="List the activations, their formulas and parameters", responses=AUTH_RESPONSES)
def list_activations() -> ActivationCatalog:
    return ActivationCatalog(
        activations=[
            ActivationInfo(
                name=spec.name,
                formula=spec.formula,
                params=params_schema(spec),
                elementwise=spec.elementwise,
            )
            for spec in ACTIVATIONS
        ]
    )


@compute_post(
    router,
    "/{name}",
    ActivationRequest,
    ActivationResponse,
    summary="Evaluate an activation with its gradient, second derivative or Jacobian",
)
async def activation(name: ActivationName, request: Request) -> JSONBytesResponse:
    # A small body can ask for a large Jacobian: never on the event loop.
    call = await accept(request, ActivationRequest, offload=lambda body: body.jacobian or body.tangent is not None)
    body, settings = call.body, call.settings
    spec = ACTIVATIONS.get(name)
    params = validate_params(spec, body.params)

    def compute(ctx: ComputeContext) -> dict[str, Any]:
        result = evaluate_activation(
            spec,
            ctx.tensor(body.input, "input"),
            params,
            grad_output=ctx.optional_tensor(body.grad_output, "grad_output"),
            second_order=body.second_order,
            want_jacobian=body.jacobian,
            tangent=ctx.optional_tensor(body.tangent, "tangent"),
            max_jacobian_elements=settings.max_jacobian_elements,
        )
        return {
            "output": ctx.wire(result.output),
            "grad": ctx.wire(result.grad),
            "grad2": ctx.wire(result.grad2),
            "jacobian": ctx.wire(result.jacobian),
            "jvp": ctx.wire(result.jvp),
        }

    return await call.respond(compute, op=f"activation/{name}")
