"""The endpoint machinery the compute routes share: their route class, body reading, the
per-request compute context, admission to and dispatch through the compute pool. Its one
public face is this package."""

from service.api.endpoints._body import read_body, require_json
from service.api.endpoints._context import ComputeContext, expression_limits, validate_params
from service.api.endpoints._dispatch import Call, accept, admit, request_deadline, run_compute
from service.api.endpoints._pool import Admission, ComputePool
from service.api.endpoints._route import RequestRoute
from service.api.endpoints._settings import SettingsDep, settings_of

__all__ = [
    "Admission",
    "Call",
    "ComputeContext",
    "ComputePool",
    "RequestRoute",
    "SettingsDep",
    "accept",
    "admit",
    "expression_limits",
    "read_body",
    "request_deadline",
    "require_json",
    "run_compute",
    "settings_of",
    "validate_params",
]
