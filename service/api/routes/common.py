"""Pieces the route modules share."""

from __future__ import annotations

from typing import Any

from fastapi import Path

from service.api.schemas import ErrorBody
from service.compute.registry import Registry

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": description}
    for code, description in {
        400: "Invalid input: ragged array, shape mismatch, bad parameter value, absent device.",
        404: "Unknown name.",
        413: "A size limit was exceeded.",
        422: "The body does not match the schema.",
    }.items()
}


def name_parameter(registry: Registry[Any]) -> Any:
    """The ``{name}`` path parameter of a registry's routes, its known names as an enum."""
    names: list[str] = [spec.name for spec in registry]
    return Path(description=f"A name from GET /v1/{registry.kind}s.", json_schema_extra={"enum": names})
