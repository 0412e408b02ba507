"""Probes, metrics and service information: /healthz, /readyz, /metrics, /v1/info."""

from __future__ import annotations

import platform

import torch
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import __version__, lifecycle
from service.api.endpoints import SettingsDep
from service.api.openapi import AUTH_RESPONSES
from service.api.responses import JSONBytesResponse
from service.api.schemas import Health, Info, Readiness
from service.compute.runtime import available_devices, resolve_device
from service.compute.wire import FLOAT_DTYPES
from service.errors import DeviceUnavailable

router = APIRouter(tags=["service"])


@router.get("/healthz", summary="Liveness: the process answers (never touches the GPU)")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: 200 when the worker can compute, 503 while starting or draining",
    response_model=Readiness,
    responses={503: {"model": Readiness}},
)
async def readyz(request: Request) -> JSONBytesResponse:
    state = lifecycle.readiness(request.app)
    return JSONBytesResponse({"status": state}, status_code=200 if state == "ready" else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics: requests, latency, compute time, in-flight and queued work, rejections",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format."}},
)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _default_device(preference: str) -> str:
    try:
        return str(resolve_device("auto", preference))
    except DeviceUnavailable:
        return f"{preference} (configured, but not available)"


@router.get("/v1/info", summary="Versions, devices, defaults and limits", responses=AUTH_RESPONSES)
def info(settings: SettingsDep) -> Info:
    return Info(
        name="gradient-service",
        version=__version__,
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        devices=available_devices(),
        default_device=_default_device(settings.device),
        dtypes=list(FLOAT_DTYPES),
        encodings=["json", "base64"],
        limits=settings.public_limits(),
    )
