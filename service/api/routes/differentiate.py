"""POST /v1/differentiate and GET /v1/functions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service.api.endpoints import ComputeContext, accept, expression_limits
from service.api.openapi import AUTH_RESPONSES, compute_post
from service.api.responses import JSONBytesResponse
from service.api.schemas import DifferentiateRequest, DifferentiateResponse, FunctionCatalog, FunctionInfo
from service.compute.expressions.differentiate import differentiate
from service.compute.expressions.language import OPERATORS, compile_program
from service.compute.ops.functions import FUNCTIONS

router = APIRouter(tags=["expressions"])


@router.get("/v1/functions", summary="The expression language's functions and operators", responses=AUTH_RESPONSES)
def list_functions() -> FunctionCatalog:
    return FunctionCatalog(
        functions=[
            FunctionInfo(name=f.name, signature=f.signature(), doc=f.doc, category=f.category)
            for f in FUNCTIONS.values()
        ],
        operators=list(OPERATORS),
    )


@compute_post(
    router,
    "/v1/differentiate",
    DifferentiateRequest,
    DifferentiateResponse,
    summary="Value, gradient, Jacobian and Hessian of a formula",
)
async def differentiate_expression(request: Request) -> JSONBytesResponse:
    # Never inline: even a small body can describe a long computation.
    call = await accept(request, DifferentiateRequest, inline=False)
    body, settings = call.body, call.settings
    limits = expression_limits(settings)

    def compute(ctx: ComputeContext) -> dict[str, Any]:
        program = compile_program(
            body.expression, frozenset(body.inputs), ctx.dtype, ctx.device, limits, settings.max_elements
        )
        inputs = {name: ctx.tensor(value, f"inputs.{name}", _kind(value)) for name, value in body.inputs.items()}
        result = differentiate(
            program,
            inputs,
            body.wrt,
            body.derivatives,
            grad_output=ctx.optional_tensor(body.grad_output, "grad_output"),
            max_entries=settings.max_jacobian_elements,
        )

        def wire_map(tensors: dict[str, Any] | None) -> dict[str, Any] | None:
            return None if tensors is None else {name: ctx.wire(tensor) for name, tensor in tensors.items()}

        hessian = None
        if result.hessian is not None:
            hessian = {row: wire_map(blocks) for row, blocks in result.hessian.items()}
        return {
            "value": ctx.wire(result.value),
            "grad": wire_map(result.grad),
            "jacobian": wire_map(result.jacobian),
            "hessian": hessian,
        }

    return await call.respond(compute, op="differentiate")


def _kind(value: Any) -> Any:
    """Integer inputs (int64 base64 objects) stay integers, for class indices and the like."""
    return "index" if isinstance(value, dict) and value.get("dtype") == "int64" else "float"
