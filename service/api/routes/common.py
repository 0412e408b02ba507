"""Pieces the route modules share."""

from __future__ import annotations

from typing import Any

from service.api.schemas import ErrorBody

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": description}
    for code, description in {
        400: "Invalid input: ragged array, shape mismatch, bad parameter value, absent device.",
        404: "Unknown name.",
        413: "A size limit was exceeded.",
        422: "The body does not match the schema.",
    }.items()
}
