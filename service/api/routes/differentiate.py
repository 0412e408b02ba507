"""POST /v1/differentiate and GET /v1/functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from fastapi import APIRouter, Request

from service.api.endpoints import ComputeContext, accept, expression_limits
from service.api.formula_schemas import FormulaDifferentiateRequest
from service.api.openapi import AUTH_RESPONSES, compute_post
from service.api.responses import JSONBytesResponse
from service.api.schemas import DifferentiateRequest, DifferentiateResponse, FunctionCatalog, FunctionInfo
from service.compute.budgets import check_cost
from service.compute.expressions.differentiate import Derivatives, Signature, differentiate, dry_run
from service.compute.expressions.language import OPERATORS, Program, compile_program
from service.compute.ops.functions import FUNCTIONS
from service.config import Settings

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
    summary="Value, gradient, Jacobian, Hessian, JVP and Hessian-vector products of a formula",
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
        return derivatives(body, body.expression, lambda: program, inputs, ctx, settings)

    return await call.respond(compute, op="differentiate")


def derivatives(
    body: DifferentiateRequest | FormulaDifferentiateRequest,
    expression: str,
    program: Callable[[], Program],
    inputs: dict[str, torch.Tensor],
    ctx: ComputeContext,
    settings: Settings,
) -> dict[str, Any]:
    """The response's fields for ``body``'s derivatives of ``expression`` at ``inputs``: first
    its cost, estimated on the meta device (all a dry run answers; over the limits, a 413),
    then the derivatives, by the ``program`` made on demand."""
    tangents = None
    if body.tangents is not None:
        tangents = {name: ctx.tensor(value, f"tangents.{name}") for name, value in body.tangents.items()}
    options: dict[str, Any] = {
        "grad_output": ctx.optional_tensor(body.grad_output, "grad_output"),
        "tangents": tangents,
        "batch": body.batch,
        "max_entries": settings.max_jacobian_elements,
    }
    limits = expression_limits(settings)
    signature = Signature.of(
        expression,
        ctx.dtype,
        inputs,
        body.wrt,
        body.derivatives,
        **options,
        max_elements=settings.max_elements,
        limits=limits,
    )
    shapes, cost = dry_run(signature)
    if body.dry_run:
        return {**_results(shapes, _shape_of), "cost": cost.public()}
    check_cost(cost, max_flops=settings.max_flops, max_elements=settings.max_elements)
    result = differentiate(program(), inputs, body.wrt, body.derivatives, **options)
    return {**_results(result, ctx.wire), "cost": None}


def _results(result: Derivatives, out: Callable[[torch.Tensor], Any]) -> dict[str, Any]:
    """The response's fields, each tensor written by ``out``."""

    def each(tensors: dict[str, torch.Tensor] | None) -> dict[str, Any] | None:
        return None if tensors is None else {name: out(tensor) for name, tensor in tensors.items()}

    return {
        "value": out(result.value),
        "grad": each(result.grad),
        "jacobian": each(result.jacobian),
        "hessian": None if result.hessian is None else {row: each(blocks) for row, blocks in result.hessian.items()},
        "jvp": None if result.jvp is None else out(result.jvp),
        "hvp": each(result.hvp),
    }


def _shape_of(tensor: torch.Tensor) -> dict[str, Any]:
    return {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}


def _kind(value: Any) -> Any:
    """Integer inputs (int64 base64 objects) stay integers, for class indices and the like."""
    return "index" if isinstance(value, dict) and value.get("dtype") == "int64" else "float"
