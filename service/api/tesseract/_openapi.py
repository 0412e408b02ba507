"""The OpenAPI document of one saved formula's Tesseract, as Tesseract's clients read it: the
paths name the endpoints it has; ``components.schemas`` holds the input and output schemas by the
names Tesseract's runtime gives them (``Apply_InputSchema``, ``ApplyInputSchema`` with its
``differentiable_arrays``, ...), which tesseract-jax reads; the ``x-supported-*`` keys say which
encodings a request may ask for."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from service.api.tesseract._arrays import INPUT_DTYPES, OUTPUT_FORMATS
from service.compute.expressions.component import OUTPUT

REF = "#/components/schemas/"
Shape = tuple[int, ...] | None
"""None: not known (the formula fails on its declared shapes; requests will say why)."""


@dataclass(frozen=True)
class Described:
    """What the document says of a formula: hashable, so that documents are cached by it."""

    name: str
    version: int
    description: str
    inputs: tuple[tuple[str, tuple[int, ...], str], ...]
    """Name, shape and dtype of each input, in declaration order."""
    output: tuple[Shape, str]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": REF + name}


def _shape_schema(shape: Shape) -> dict[str, Any]:
    if shape is None:
        return {"type": "array", "items": {"type": "integer", "minimum": 0}, "title": "Shape"}
    return {
        "type": "array",
        "prefixItems": [{"type": "integer", "const": n} for n in shape],
        "minItems": len(shape),
        "maxItems": len(shape),
        "title": "Shape",
        "examples": [list(shape)],
    }


def _array(shape: Shape, dtype: str, title: str) -> dict[str, Any]:
    """An encoded array of ``shape``, sent in any dtype that casts to ``dtype``."""
    return {
        "type": "object",
        "title": title,
        "properties": {
            "object_type": {"type": "string", "const": "array", "default": "array"},
            "shape": _shape_schema(shape),
            "dtype": {"type": "string", "enum": list(INPUT_DTYPES), "examples": [dtype]},
            "data": {
                "oneOf": [_ref("Base64ArrayData"), _ref("JsonArrayData")],
                "discriminator": {"propertyName": "encoding"},
            },
        },
        "required": ["shape", "dtype", "data"],
        "additionalProperties": False,
        "array_flags": ["differentiable"],
    }


def _shape_dtype(shape: Shape, title: str) -> dict[str, Any]:
    return {
        "type": "object",
        "title": title,
        "properties": {"shape": _shape_schema(shape), "dtype": {"type": "string", "enum": list(INPUT_DTYPES)}},
        "required": ["shape", "dtype"],
        "additionalProperties": False,
    }


def _object(title: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "title": title,
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
        **extra,
    }


def _names(title: str, names: list[str]) -> dict[str, Any]:
    return {"type": "array", "uniqueItems": True, "minItems": 1, "items": {"enum": names}, "title": title}


def _post(operation: str, summary: str, request: str, response: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "operationId": operation,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
            "responses": {
                "200": {
                    "description": "Successful Response",
                    "content": {"application/json": {"schema": _ref(response)}},
                },
                "422": {
                    "description": "Validation Error",
                    "content": {"application/json": {"schema": _ref("HTTPValidationError")}},
                },
            },
        }
    }


@functools.lru_cache(maxsize=256)
def document(formula: Described) -> dict[str, Any]:
    """The formula's OpenAPI document (cached by formula version)."""
    names = [name for name, _, _ in formula.inputs]
    out_shape, out_dtype = formula.output
    arrays = {name: _array(shape, dtype, f"Array_{name}") for name, shape, dtype in formula.inputs}
    diffable_in = {name: {"shape": list(shape), "dtype": dtype} for name, shape, dtype in formula.inputs}
    diffable_out = {OUTPUT: {"shape": None if out_shape is None else list(out_shape), "dtype": out_dtype}}
    value = _array(out_shape, out_dtype, "Array_value")
    schemas: dict[str, Any] = {
        "Base64ArrayData": _object(
            "Base64ArrayData", {"buffer": {"type": "string"}, "encoding": {"type": "string", "const": "base64"}}
        ),
        "JsonArrayData": _object("JsonArrayData", {"buffer": {}, "encoding": {"type": "string", "const": "json"}}),
        "Apply_InputSchema": _object("Apply_InputSchema", arrays),
        "Apply_OutputSchema": _object("Apply_OutputSchema", {OUTPUT: value}),
        "ApplyInputSchema": _object(
            "ApplyInputSchema",
            {"inputs": _ref("Apply_InputSchema")},
            differentiable_arrays=diffable_in,
            field_order={"": names},
        ),
        "ApplyOutputSchema": {
            "allOf": [_ref("Apply_OutputSchema")],
            "title": "ApplyOutputSchema",
            "differentiable_arrays": diffable_out,
            "field_order": {"": [OUTPUT]},
        },
        "AbstractInputSchema": _object(
            "AbstractInputSchema",
            {
                "inputs": _object(
                    "AbstractEval_InputSchema",
                    {name: _shape_dtype(shape, f"ShapeDType_{name}") for name, shape, _ in formula.inputs},
                )
            },
        ),
        "AbstractOutputSchema": _object("AbstractOutputSchema", {OUTPUT: _shape_dtype(out_shape, "ShapeDType_value")}),
        "JacobianInputSchema": _object(
            "JacobianInputSchema",
            {
                "inputs": _ref("Apply_InputSchema"),
                "jac_inputs": _names("Jac Inputs", names),
                "jac_outputs": _names("Jac Outputs", [OUTPUT]),
            },
        ),
        "JacobianOutputSchema": _object(
            "JacobianOutputSchema",
            {OUTPUT: {"type": "object", "additionalProperties": _array(None, out_dtype, "Array_jacobian")}},
        ),
        "JVPInputSchema": _object(
            "JVPInputSchema",
            {
                "inputs": _ref("Apply_InputSchema"),
                "jvp_inputs": _names("Jvp Inputs", names),
                "jvp_outputs": _names("Jvp Outputs", [OUTPUT]),
                "tangent_vector": {"type": "object", "additionalProperties": _array(None, out_dtype, "Array")},
            },
        ),
        "JVPOutputSchema": _object("JVPOutputSchema", {OUTPUT: value}),
        "VJPInputSchema": _object(
            "VJPInputSchema",
            {
                "inputs": _ref("Apply_InputSchema"),
                "vjp_inputs": _names("Vjp Inputs", names),
                "vjp_outputs": _names("Vjp Outputs", [OUTPUT]),
                "cotangent_vector": _object("CotangentVector", {OUTPUT: value}),
            },
        ),
        "VJPOutputSchema": {"type": "object", "title": "VJPOutputSchema", "properties": arrays},
        "HTTPValidationError": {
            "type": "object",
            "title": "HTTPValidationError",
            "properties": {"detail": {"type": "array", "items": _ref("ValidationError"), "title": "Detail"}},
        },
        "ValidationError": _object(
            "ValidationError",
            {
                "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                "msg": {"type": "string"},
                "type": {"type": "string"},
            },
        ),
    }
    paths = {
        "/apply": _post("apply", "Apply the formula", "ApplyInputSchema", "ApplyOutputSchema"),
        "/jacobian": _post("jacobian", "Its Jacobian", "JacobianInputSchema", "JacobianOutputSchema"),
        "/jacobian_vector_product": _post(
            "jacobian_vector_product", "A Jacobian-vector product", "JVPInputSchema", "JVPOutputSchema"
        ),
        "/vector_jacobian_product": _post(
            "vector_jacobian_product", "A vector-Jacobian product", "VJPInputSchema", "VJPOutputSchema"
        ),
        "/abstract_eval": _post(
            "abstract_eval", "The output's shape and dtype", "AbstractInputSchema", "AbstractOutputSchema"
        ),
        "/health": {
            "get": {
                "summary": "Health",
                "operationId": "health",
                "responses": {
                    "200": {
                        "description": "Successful Response",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": formula.name, "version": str(formula.version), "description": formula.description},
        "paths": paths,
        "components": {"schemas": schemas},
        "x-supported-output-formats": list(OUTPUT_FORMATS),
        "x-supported-gpu-transports": ["none"],
        "x-supported-compressions": ["none"],
    }
