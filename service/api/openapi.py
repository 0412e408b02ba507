"""The OpenAPI document: the compute routes' request bodies (which they read themselves) and
the responses, errors included, every route documents."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel

from service.api.endpoints import RequestRoute
from service.api.responses import JSONBytesResponse
from service.api.schemas import ErrorBody
from service.compute.ops.registry import Registry


def _errors(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": text} for code, text in descriptions.items()}


AUTH_RESPONSES = _errors({401: "An API key is configured and the request has none, or a wrong one."})
"""What any /v1 route may answer besides its own result."""

ERROR_RESPONSES = {
    **AUTH_RESPONSES,
    **_errors(
        {
            400: "Invalid input: ragged array, shape mismatch, bad parameter value, absent device.",
            404: "Unknown name.",
            413: "A size limit was exceeded.",
            415: "The body is not sent as JSON.",
            422: "The body does not match the schema.",
            503: "Every compute slot is busy and the queue is full (see Retry-After), or the device ran out of memory.",
            504: "The request's time budget ran out.",
        }
    ),
}
"""What a compute route may answer besides its result."""


def name_parameter(registry: Registry[Any]) -> Any:
    """The ``{name}`` path parameter of a registry's routes, its known names as an enum."""
    names: list[str] = [spec.name for spec in registry]
    return Path(description=f"A name from GET /v1/{registry.kind}s.", json_schema_extra={"enum": names})


Endpoint = Callable[..., Coroutine[Any, Any, Response]]


def request_post(router: APIRouter, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
    """``@router.post(path, ...)`` for an endpoint that reads its own body: a RequestRoute
    answering with JSON bytes; ``options`` (responses, openapi_extra, summary...) document it."""

    def register(endpoint: Endpoint) -> Endpoint:
        router.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            route_class_override=RequestRoute,
            response_class=JSONBytesResponse,
            **options,
        )
        return endpoint

    return register


def compute_post(
    router: APIRouter,
    path: str,
    body: type[BaseModel],
    result: type[BaseModel],
    **options: Any,
) -> Callable[[Endpoint], Endpoint]:
    """``request_post`` for a compute endpoint whose JSON ``body`` and ``result`` models, and
    every error it may answer, are documented in the OpenAPI."""
    responses = {200: {"model": result}, **ERROR_RESPONSES}
    return request_post(router, path, responses=responses, openapi_extra=json_body_openapi(body), **options)


COMPONENT_REF = "#/components/schemas/{model}"

REQUEST_SCHEMAS: dict[str, Any] = {}
"""The request models documented by ``json_body_openapi`` and the models they use, by name, for
``components.schemas`` of the OpenAPI (see ``with_request_schemas``)."""


def json_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` that documents ``model`` as the route's required JSON body."""
    schema = model.model_json_schema(ref_template=COMPONENT_REF)
    REQUEST_SCHEMAS.update(schema.pop("$defs", {}))
    REQUEST_SCHEMAS[model.__name__] = schema
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": COMPONENT_REF.format(model=model.__name__)}}},
        }
    }


def with_request_schemas(openapi: dict[str, Any]) -> dict[str, Any]:
    """``openapi`` with the hand-documented request models among its component schemas."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in REQUEST_SCHEMAS.items():
        if schemas.setdefault(name, schema) != schema:
            raise RuntimeError(f"two different schemas are both named {name} in the OpenAPI")
    return openapi
