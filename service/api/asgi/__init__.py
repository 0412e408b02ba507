"""The ASGI layer: what runs around every request before any route: the API keys, the body
limit and compression, request ids, logs and metrics, and the compute lane that serves the
compute routes directly. Its one public face is this package."""

from service.api.asgi._auth import ApiKeyMiddleware
from service.api.asgi._headers import raw_header
from service.api.asgi._lane import ComputeLane
from service.api.asgi._limits import GZIP_LEVEL, BodyLimitMiddleware, GZipIfAccepted
from service.api.asgi._observability import STARTED_KEY, Metrics, RequestMiddleware, local_gpu_memory

__all__ = [
    "GZIP_LEVEL",
    "STARTED_KEY",
    "ApiKeyMiddleware",
    "BodyLimitMiddleware",
    "ComputeLane",
    "GZipIfAccepted",
    "Metrics",
    "RequestMiddleware",
    "local_gpu_memory",
    "raw_header",
]
