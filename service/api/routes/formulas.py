"""Saved formulas: PUT, GET and DELETE /v1/formulas/{name}, GET /v1/formulas, and POST
/v1/formulas/{name}/differentiate. The database is read and written in threads, never on the
event loop; derivatives are computed like /v1/differentiate's, in a compute worker."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Header, Path, Request, Response

from service.api.endpoints import ComputeContext, SettingsDep, accept, expression_limits
from service.api.formula_schemas import (
    AUTH,
    BAD_NAME,
    ERRORS,
    NOT_FOUND,
    ONE,
    PRECONDITION,
    FormulaDifferentiateRequest,
    FormulaList,
    FormulaOut,
    FormulaSpec,
)
from service.api.openapi import compute_post
from service.api.responses import JSONBytesResponse
from service.api.routes.differentiate import derivatives
from service.api.schemas import DifferentiateResponse
from service.compute.expressions.language import Program
from service.compute.expressions.saved import check_formula, check_formula_name, decode_inputs, saved_program
from service.errors import InvalidInput, LimitExceeded
from service.store import (
    NAME_PATTERN,
    FormulaInput,
    FormulaStore,
    SavedFormula,
    check_name,
    formula_not_found,
    parse_etags,
)

router = APIRouter(tags=["formulas"])

NAME = Annotated[
    str,
    Path(
        description="1-64 characters: letters, digits, '_', '.', '-' (a letter or digit first); another is a 400.",
        # Documented, not enforced by the framework: the route's own check answers 400 invalid_name.
        json_schema_extra={"pattern": NAME_PATTERN, "minLength": 1, "maxLength": 64},
    ),
]
IF_MATCH = Header(description='Write only if the stored formula\'s ETag is one of these (`"*"`: if it exists).')


def _formula(formula: SavedFormula, status: int = 200, **headers: str) -> JSONBytesResponse:
    return JSONBytesResponse(formula.public(), status_code=status, headers={"ETag": f'"{formula.etag}"', **headers})


def _get(store: FormulaStore, name: str) -> SavedFormula:
    check_name(name)
    formula = store.get(name)
    if formula is None:
        raise formula_not_found(name)
    return formula


@router.get("/v1/formulas", summary="Every saved formula", response_model=FormulaList, responses=AUTH)
def list_formulas(request: Request) -> JSONBytesResponse:
    return JSONBytesResponse({"formulas": [formula.public() for formula in request.app.formulas.list()]})


@router.get(
    "/v1/formulas/{name}",
    summary="One saved formula (ETag header; If-None-Match answers 304 when unchanged)",
    response_model=FormulaOut,
    responses={
        **ONE,
        304: {"description": "Not modified: If-None-Match holds its ETag."},
        **AUTH,
        **BAD_NAME,
        **NOT_FOUND,
    },
)
def get_formula(request: Request, name: NAME, if_none_match: Annotated[str | None, Header()] = None) -> Response:
    formula = _get(request.app.formulas, name)
    tags = parse_etags(if_none_match)
    if tags is not None and ("*" in tags or formula.etag in tags):
        return Response(status_code=304, headers={"ETag": f'"{formula.etag}"'})
    return _formula(formula)


@router.put(
    "/v1/formulas/{name}",
    summary="Save a formula: checked first (a refused one is not saved); 201 new, 200 replaced",
    response_model=FormulaOut,
    responses={
        **ONE,
        201: {"model": FormulaOut, "description": "Created (Location and ETag headers)."},
        **ERRORS,
        **PRECONDITION,
    },
)
def put_formula(
    request: Request,
    name: NAME,
    spec: FormulaSpec,
    settings: SettingsDep,
    if_match: Annotated[str | None, IF_MATCH] = None,
    if_none_match: Annotated[str | None, Header(description='`"*"`: create only, 412 if it exists.')] = None,
) -> JSONBytesResponse:
    check_formula_name(name)
    description = spec.description
    if description is not None and len(description) > settings.formula_description_max_length:
        limit = settings.formula_description_max_length
        raise LimitExceeded(
            f"The description has {len(description)} characters, over the limit of {limit}.",
            error_type="description_too_long",
            limit=limit,
        )
    inputs = {key: FormulaInput(tuple(value.shape), value.dtype) for key, value in spec.inputs.items()}
    check_formula(
        spec.expression,
        inputs,
        expression_limits(settings),
        max_elements=settings.max_elements,
        max_inputs=settings.formula_max_inputs,
    )
    formula, created = request.app.formulas.put(
        name, spec.expression, inputs, description, if_match=if_match, if_none_match=if_none_match
    )
    if created:
        return _formula(formula, 201, Location=f"/v1/formulas/{name}")
    return _formula(formula)


@router.delete(
    "/v1/formulas/{name}",
    summary="Delete a formula (requests already using it finish)",
    status_code=204,
    response_class=Response,
    responses={**AUTH, **BAD_NAME, **NOT_FOUND, **PRECONDITION},
)
def delete_formula(request: Request, name: NAME, if_match: Annotated[str | None, IF_MATCH] = None) -> Response:
    request.app.formulas.delete(check_name(name), if_match=if_match)
    return Response(status_code=204)


@compute_post(
    router,
    "/v1/formulas/{name}/differentiate",
    FormulaDifferentiateRequest,
    DifferentiateResponse,
    summary="Value and derivatives of a saved formula (the body of /v1/differentiate, without the expression)",
)
async def differentiate_formula(request: Request, name: NAME) -> JSONBytesResponse:
    check_name(name)
    call = await accept(request, FormulaDifferentiateRequest, inline=False)  # computed in a worker
    body, settings = call.body, call.settings
    formula = await anyio.to_thread.run_sync(_get, request.app.formulas, name)
    if body.dtype is not None and body.dtype != formula.dtype:
        raise InvalidInput(
            f"The formula '{name}' computes in {formula.dtype}; omit dtype or send that one.",
            error_type="dtype_mismatch",
        )
    call.body = body = body.model_copy(update={"dtype": formula.dtype})
    limits = expression_limits(settings)

    def compute(ctx: ComputeContext) -> dict[str, Any]:
        inputs = decode_inputs(formula, body.inputs, body.batch, ctx.device, ctx.budget)

        def program() -> Program:
            return saved_program(formula, ctx.dtype, ctx.device, limits, settings.max_elements)

        return derivatives(body, formula.expression, program, inputs, ctx, settings)

    response = await call.respond(compute, op="differentiate")
    response.headers["ETag"] = f'"{formula.etag}"'
    return response
