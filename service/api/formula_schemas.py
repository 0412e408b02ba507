"""The saved formulas' request and response models (/v1/formulas)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api.openapi import AUTH_RESPONSES, ERROR_RESPONSES
from service.api.schemas import ComputeRequest, DerivativeName, DifferentiateRequest, ErrorBody, Tensor

HIMMELBLAU = "(x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2"


class FormulaInputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    shape: list[int] = Field(description="The input's shape: [] for a number, [n] for a vector, ...")
    dtype: Literal["float32", "float64"] = Field("float32", description="The input's dtype.")


class FormulaSpec(BaseModel):
    """A formula to save: its expression and the inputs it reads."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "expression": HIMMELBLAU,
                    "inputs": {"x": {"shape": [2], "dtype": "float64"}},
                    "description": "Himmelblau's function",
                },
                {
                    "expression": "o = sigmoid(x @ w.T)\nmse(o, ones_like(o))",
                    "inputs": {"x": {"shape": [1, 3]}, "w": {"shape": [2, 3]}},
                },
            ]
        },
    )

    expression: str = Field(
        description="The formula, in the language of POST /v1/differentiate: `name = expr` lines, then its value."
    )
    inputs: dict[str, FormulaInputSpec] = Field(
        description="Every input the formula reads, in order, with its shape and dtype; requests must match them."
    )
    description: str | None = Field(None, description="Free text shown with the formula.")


class FormulaOut(BaseModel):
    name: str
    expression: str
    inputs: dict[str, FormulaInputSpec]
    description: str | None
    version: int = Field(description="1 when created, one more at every replacement.")
    etag: str = Field(description="Changes with every write; quoted, it is the ETag header, for If-Match.")
    created_at: str = Field(description="ISO 8601, UTC.")
    updated_at: str = Field(description="ISO 8601, UTC.")


class FormulaList(BaseModel):
    formulas: list[FormulaOut] = Field(description="Every saved formula, by name.")


class FormulaDifferentiateRequest(ComputeRequest):
    """The body of POST /v1/differentiate without the expression: the saved formula's instead."""

    dtype: Literal["float32", "float64"] | None = Field(  # type: ignore[assignment]
        None,
        description="The formula's own dtype (float64 if any declared input is, else float32): omit it, or "
        "give that one.",
    )
    inputs: dict[str, Tensor] = Field(
        description="Every declared input, of its declared shape (with the points first for those in batch); "
        "base64 ones of its declared dtype."
    )
    wrt: list[str] | None = Field(None, description=DifferentiateRequest.model_fields["wrt"].description)
    derivatives: list[DerivativeName] = Field(
        default_factory=lambda: list[DerivativeName](["grad"]), description="Which derivatives to return."
    )
    grad_output: Tensor | None = Field(None, description=DifferentiateRequest.model_fields["grad_output"].description)
    tangents: dict[str, Tensor] | None = Field(
        None, description=DifferentiateRequest.model_fields["tangents"].description
    )
    batch: list[str] | None = Field(None, description=DifferentiateRequest.model_fields["batch"].description)
    dry_run: bool = Field(False, description=DifferentiateRequest.model_fields["dry_run"].description)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"inputs": {"x": [3.0, 2.0]}, "derivatives": ["grad", "hessian"]},
                {"inputs": {"x": [[3.0, 2.0], [0.0, 0.0]]}, "batch": ["x"], "derivatives": ["grad"]},
            ]
        }
    )


# What the routes answer, for the OpenAPI.
Responses = dict[int | str, dict[str, Any]]
UNAVAILABLE: Responses = {
    503: {"model": ErrorBody, "description": "The formulas' database cannot be reached (database_unavailable)."}
}
AUTH: Responses = {**AUTH_RESPONSES, **UNAVAILABLE}
"""What every formula route may answer."""
ERRORS: Responses = {**ERROR_RESPONSES, **UNAVAILABLE}
BAD_NAME: Responses = {400: {"model": ErrorBody, "description": "The name is not a formula name (invalid_name)."}}
NOT_FOUND: Responses = {
    404: {"model": ErrorBody, "description": "No formula is saved under this name (formula_not_found)."}
}
PRECONDITION: Responses = {
    412: {"model": ErrorBody, "description": "If-Match does not match the stored ETag, or If-None-Match does."}
}
ONE: Responses = {
    200: {
        "model": FormulaOut,
        "headers": {"ETag": {"description": "The version's ETag.", "schema": {"type": "string"}}},
    }
}
