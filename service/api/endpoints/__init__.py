"""The endpoint machinery the compute routes share: their route class, body reading, the
per-request compute context, admission to and dispatch through the compute pool. Its one
public face is this package."""

from service.api.endpoints._body import read_body, read_json_body
from service.api.endpoints._context import ComputeContext, expression_limits, validate_params
from service.api.endpoints._dispatch import Call, accept, admit, compute_response, request_deadline
from service.api.endpoints._pool import ComputePool
from service.api.endpoints._route import RequestRoute
from service.api.endpoints._settings import SettingsDep, settings_of

__all__ = [
    "Call",
    "ComputeContext",
    "ComputePool",
    "RequestRoute",
    "SettingsDep",
    "accept",
    "admit",
    "compute_response",
    "expression_limits",
    "read_body",
    "read_json_body",
    "request_deadline",
    "settings_of",
    "validate_params",
]
