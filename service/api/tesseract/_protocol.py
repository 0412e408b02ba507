"""The Tesseract endpoints of one saved formula, as plain functions: the request body read and
checked against the formula's declared inputs (a 422 listing every problem otherwise), the
component called, the answer written in the negotiated array encoding.

The function a saved formula defines takes its declared inputs and returns ``{"value": ...}``;
every input is differentiable, and so is ``value``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from service.api.tesseract._arrays import (
    OUTPUT_FORMATS,
    Invalid,
    Loc,
    OutputFormat,
    Problems,
    invalid,
    read_array,
    read_shape_dtype,
    write_array,
)
from service.api.tesseract._errors import ProtocolError
from service.compute.expressions.component import OUTPUT, Component
from service.compute.expressions.saved import torch_dtype
from service.compute.wire import DTYPE_NAMES, ElementBudget
from service.store import SavedFormula

ARRAY_ENDPOINTS = ("apply", "jacobian", "jacobian_vector_product", "vector_jacobian_product")
"""The endpoints that answer with arrays, in the encoding the ``Accept`` header asks for."""
ENDPOINTS = (*ARRAY_ENDPOINTS, "abstract_eval")
"""The POST endpoints; ``health`` is a GET."""
FIELDS = {
    "apply": ("inputs",),
    "abstract_eval": ("inputs",),
    "jacobian": ("inputs", "jac_inputs", "jac_outputs"),
    "jacobian_vector_product": ("inputs", "jvp_inputs", "jvp_outputs", "tangent_vector"),
    "vector_jacobian_product": ("inputs", "vjp_inputs", "vjp_outputs", "cotangent_vector"),
}
DEFAULT_FORMAT: OutputFormat = "json+base64"
"""Exact and compact; ``Accept: application/json`` asks for JSON numbers."""


def negotiate(accept: str | None) -> OutputFormat:
    """The output format of the first media range in ``Accept`` (by q-value) that this server can
    write with no GPU transport and no compression; 406 when none."""
    if not accept:
        return DEFAULT_FORMAT
    ranges = []
    for position, media_range in enumerate(accept.split(",")):
        media_type, *parameters = (part.strip() for part in media_range.split(";"))
        params = {
            key.strip().lower(): value.strip().strip('"') for key, _, value in (p.partition("=") for p in parameters)
        }
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 0.0
        if quality > 0:  # q=0: not acceptable
            ranges.append((-quality, position, media_type.lower(), params))
    for _, _, media_type, params in sorted(ranges):
        if params.get("gpu_transport", "none") != "none" or params.get("compression", "none") != "none":
            continue
        if media_type in ("*/*", "application/*"):
            return DEFAULT_FORMAT
        name = media_type.removeprefix("application/")
        if name in OUTPUT_FORMATS:
            return name
    raise ProtocolError(
        406,
        {
            "message": f"Cannot produce any encoding accepted by {accept!r}",
            "available_formats": list(OUTPUT_FORMATS),
            "available_gpu_transports": ["none"],
            "available_compressions": ["none"],
        },
    )


@dataclass
class Reader:
    """Reads one request's arrays against one formula: each input in its declared dtype."""

    formula: SavedFormula
    component: Component
    device: torch.device
    budget: ElementBudget

    def types(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {name: (spec.shape, torch_dtype(spec)) for name, spec in self.formula.inputs.items()}

    def output_type(self) -> tuple[tuple[int, ...], torch.dtype]:
        return self.component.output_type(self.types())

    def inputs(self, value: Any, problems: Problems) -> dict[str, torch.Tensor]:
        return self.vectors(value, "inputs", list(self.formula.inputs), self.types(), problems)

    def abstract_inputs(self, value: Any, problems: Problems) -> None:
        loc = ("body", "inputs")
        if self._check_names(value, loc, problems):
            for name, spec in self.formula.inputs.items():
                if name not in value:
                    continue
                with problems.at(loc):
                    read_shape_dtype(value[name], (*loc, name), spec.shape)

    def names(self, value: Any, field: str, known: tuple[str, ...], problems: Problems) -> list[str]:
        """A non-empty set of names among ``known``, in ``known``'s order."""
        loc = ("body", field)
        if not isinstance(value, list):
            problems.add(loc, "set_type", "Input should be a valid set")
            return []
        if not value:
            problems.add(loc, "too_short", "Set should have at least 1 item after validation, not 0")
        for index, name in enumerate(value):
            if name not in known:
                choices = " or ".join(f"'{choice}'" for choice in known)
                problems.add((*loc, index), "literal_error", f"Input should be {choices}")
        return [name for name in known if name in value]

    def vectors(
        self,
        value: Any,
        field: str,
        keys: list[str],
        types: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
        problems: Problems,
    ) -> dict[str, torch.Tensor]:
        """An array per name in ``keys`` (exactly those), each of its shape and dtype in ``types``."""
        loc = ("body", field)
        tensors = {}
        if (keys or field == "inputs") and self._check_names(value, loc, problems, keys):
            for name in keys:
                if name in value:
                    shape, dtype = types[name]
                    with problems.at(loc):
                        tensors[name] = read_array(value[name], (*loc, name), shape, dtype, self.device, self.budget)
        return tensors

    def _check_names(self, value: Any, loc: Loc, problems: Problems, keys: list[str] | None = None) -> bool:
        """Whether ``value`` is an object (its keys not among ``keys``, by default the formula's
        inputs, and the keys missing, are problems)."""
        keys = list(self.formula.inputs) if keys is None else keys
        if not isinstance(value, dict):
            problems.add(loc, "dict_type", "Input should be a valid dictionary")
            return False
        for name in value:
            if name not in keys:
                expected = ", ".join(keys)
                problems.add((*loc, name), "extra_forbidden", f"Extra inputs are not permitted (expected: {expected})")
        for name in keys:
            if name not in value:
                problems.add((*loc, name), "missing", "Field required")
        return True


def envelope(tree: Any, endpoint: str) -> dict[str, Any]:
    """The request body's top-level object, with exactly the endpoint's fields."""
    if not isinstance(tree, dict):
        raise invalid(("body",), "model_attributes_type", "Input should be a valid dictionary or object")
    problems = Problems()
    fields = FIELDS[endpoint]
    for key in tree:
        if key not in fields:
            problems.add(("body", key), "extra_forbidden", "Extra inputs are not permitted")
    for key in fields:
        if key not in tree:
            problems.add(("body", key), "missing", "Field required")
    problems.check()
    return tree


def run(endpoint: str, tree: Any, reader: Reader, output_format: OutputFormat) -> dict[str, Any]:
    """One endpoint's answer to the request body ``tree``."""
    body = envelope(tree, endpoint)
    problems = Problems()
    component, names = reader.component, tuple(reader.formula.inputs)
    if endpoint == "abstract_eval":
        reader.abstract_inputs(body["inputs"], problems)
        problems.check()
        shape, dtype = reader.output_type()
        return {OUTPUT: {"shape": list(shape), "dtype": DTYPE_NAMES[dtype]}}
    inputs = reader.inputs(body["inputs"], problems)

    def out(tensor: torch.Tensor) -> dict[str, Any]:
        return write_array(tensor, output_format)

    if endpoint == "apply":
        problems.check()
        return {OUTPUT: out(component.apply(inputs))}
    if endpoint == "jacobian":
        wrt = reader.names(body["jac_inputs"], "jac_inputs", names, problems)
        reader.names(body["jac_outputs"], "jac_outputs", (OUTPUT,), problems)
        problems.check()
        blocks = component.jacobian(inputs, wrt)
        return {OUTPUT: {name: out(blocks[name]) for name in wrt}}
    if endpoint == "jacobian_vector_product":
        wrt = reader.names(body["jvp_inputs"], "jvp_inputs", names, problems)
        reader.names(body["jvp_outputs"], "jvp_outputs", (OUTPUT,), problems)
        tangents = reader.vectors(body["tangent_vector"], "tangent_vector", wrt, reader.types(), problems)
        problems.check()
        return {OUTPUT: out(component.jvp(inputs, wrt, tangents))}
    wrt = reader.names(body["vjp_inputs"], "vjp_inputs", names, problems)
    outputs = reader.names(body["vjp_outputs"], "vjp_outputs", (OUTPUT,), problems)
    types = {OUTPUT: reader.output_type()}
    cotangents = reader.vectors(body["cotangent_vector"], "cotangent_vector", outputs, types, problems)
    problems.check()
    grads = component.vjp(inputs, wrt, cotangents[OUTPUT])
    return {name: out(grads[name]) for name in wrt}


__all__ = ["ARRAY_ENDPOINTS", "ENDPOINTS", "Invalid", "Reader", "negotiate", "run"]
