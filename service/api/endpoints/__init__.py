"""The endpoint machinery the compute routes share: their route class, body reading, the
per-request compute context, admission to and dispatch through the compute pool. Its one
public face is this package."""

from service.api.endpoints._context import ComputeContext, expression_limits, validate_params
from service.api.endpoints._dispatch import Call, accept, request_deadline
from service.api.endpoints._pool import Admission, ComputePool
from service.api.endpoints._route import RequestRoute
from service.api.endpoints._settings import SettingsDep

__all__ = [
    "Admission",
    "Call",
    "ComputeContext",
    "ComputePool",
    "RequestRoute",
    "SettingsDep",
    "accept",
    "expression_limits",
    "request_deadline",
    "validate_params",
]
