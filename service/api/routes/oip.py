"""The Open Inference Protocol (v2) under /v2: server and model health and metadata, and
inference in JSON or with the binary tensor data extension. Every activation, loss and saved
formula is a model; errors have the protocol's body, ``{"error": "..."}``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from service import __version__
from service.api.oip import serving
from service.api.oip.schemas import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    OipError,
    ServerLive,
    ServerMetadata,
    ServerReady,
)
from service.api.openapi import Endpoint, json_body_openapi, request_post
from service.api.responses import JSONBytesResponse

router = APIRouter(prefix="/v2", tags=["open inference protocol"])

Name = Annotated[
    str, Path(description="An activation, a loss or a saved formula.", examples=["sigmoid", "cross_entropy"])
]
Version = Annotated[str, Path(description="1 for activations and losses; a formula's version number.", examples=["1"])]

EXTENSIONS = ["binary_tensor_data"]
BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OipError, "description": text}
    for code, text in {
        400: "Bad input: a malformed body, an unknown input or output, a datatype or shape that does not fit.",
        401: "An API key is configured and the request has none, or a wrong one.",
        404: "No such model (or version).",
        413: "A size limit was exceeded.",
        503: "Every compute slot is busy (see Retry-After), or the device ran out of memory.",
        504: "The request's time budget ran out.",
    }.items()
}
MODEL_ERRORS: dict[int | str, dict[str, Any]] = {code: ERRORS[code] for code in (401, 404, 503)}
HEADER_LENGTH_PARAMETER = {
    "name": serving.HEADER_LENGTH_NAME,
    "in": "header",
    "required": False,
    "description": "The binary tensor data extension: the JSON header's length; the binary tensors follow it.",
    "schema": {"type": "integer", "minimum": 0},
}


def _infer_openapi() -> dict[str, Any]:
    extra = json_body_openapi(InferenceRequest)
    content = extra["requestBody"]["content"]
    content["application/octet-stream"] = {
        "schema": {"type": "string", "format": "binary"},
        "description": "The JSON header (Inference-Header-Content-Length bytes), then the binary tensors.",
    }
    return {**extra, "parameters": [HEADER_LENGTH_PARAMETER]}


@router.get("", summary="Server metadata: name, version, extensions", responses={401: ERRORS[401]})
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="gradient-service", version=__version__, extensions=EXTENSIONS)


@router.get("/health/live", summary="Server liveness: the process answers")
async def server_live() -> ServerLive:
    return ServerLive(live=True)


@router.get(
    "/health/ready",
    summary="Server readiness: 200 when it can compute, 503 while starting or draining (as /readyz)",
    response_model=ServerReady,
    responses={503: {"model": ServerReady}},
)
async def server_ready(request: Request) -> JSONBytesResponse:
    ready = serving.server_ready(request)
    return JSONBytesResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/models/{name}", summary="Model metadata: its inputs and outputs", responses=MODEL_ERRORS)
async def model_metadata(name: Name, request: Request) -> ModelMetadata:
    return await serving.metadata(request, name, None)


@router.get("/models/{name}/versions/{version}", summary="Model metadata, of one version", responses=MODEL_ERRORS)
async def model_version_metadata(name: Name, version: Version, request: Request) -> ModelMetadata:
    return await serving.metadata(request, name, version)


async def _ready(request: Request, name: str, version: str | None) -> JSONBytesResponse:
    found = await serving.model(request, name, version)
    ready = serving.server_ready(request)
    return JSONBytesResponse({"name": found.name, "ready": ready}, status_code=200 if ready else 503)


READY_RESPONSES: dict[int | str, dict[str, Any]] = {**MODEL_ERRORS, 503: {"model": ModelReady}}


@router.get("/models/{name}/ready", summary="Model readiness", response_model=ModelReady, responses=READY_RESPONSES)
async def model_ready(name: Name, request: Request) -> JSONBytesResponse:
    return await _ready(request, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="Model readiness, of one version",
    response_model=ModelReady,
    responses=READY_RESPONSES,
)
async def model_version_ready(name: Name, version: Version, request: Request) -> JSONBytesResponse:
    return await _ready(request, name, version)


def _infer_route(path: str, summary: str) -> Callable[[Endpoint], Endpoint]:
    responses = {200: {"model": InferenceResponse, "content": BINARY}, **ERRORS}
    return request_post(router, path, responses=responses, openapi_extra=_infer_openapi(), summary=summary)


@_infer_route("/models/{name}/infer", "Inference: outputs and their derivatives, in JSON or binary")
async def infer(name: Name, request: Request) -> Response:
    return await serving.infer(request, name, None)


@_infer_route("/models/{name}/versions/{version}/infer", "Inference, on one version of the model")
async def infer_version(name: Name, version: Version, request: Request) -> Response:
    return await serving.infer(request, name, version)
