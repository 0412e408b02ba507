"""The per-request compute context: device, dtype, element budget, encoding and timing."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import ValidationError

from service.api.errors import request_validation_error
from service.api.schemas import ComputeRequest, params_model
from service.compute.expressions.language import Limits
from service.compute.ops.registry import NamedSpec, ParamsSpec
from service.compute.runtime import resolve_device
from service.compute.wire import DTYPE_NAMES, FLOAT_DTYPES, ElementBudget, Encoding, Kind, decode, encode
from service.config import Settings


@dataclass
class ComputeContext:
    """What every compute route needs to turn wire tensors into torch ones and back."""

    device: torch.device
    dtype: torch.dtype
    encoding: Encoding
    budget: ElementBudget
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def of(cls, request: ComputeRequest, settings: Settings) -> ComputeContext:
        return cls(
            device=resolve_device(request.device, settings.device),
            dtype=FLOAT_DTYPES[request.dtype],
            encoding=request.encoding,
            budget=ElementBudget(settings.max_elements),
        )

    def tensor(self, value: Any, where: str, kind: Kind = "float") -> torch.Tensor:
        return decode(value, where=where, dtype=self.dtype, device=self.device, budget=self.budget, kind=kind)

    def optional_tensor(self, value: Any, where: str, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        if value is None:
            return None
        return decode(value, where=where, dtype=dtype or self.dtype, device=self.device, budget=self.budget)

    def tensor_params(self, spec: NamedSpec, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with its tensor-valued entries (such as pos_weight) decoded."""
        return {
            param.name: self.optional_tensor(params[param.name], f"params.{param.name}")
            if param.tensor
            else params[param.name]
            for param in spec.params
        }

    def wire(self, tensor: torch.Tensor | None) -> Any:
        return None if tensor is None else encode(tensor, self.encoding)

    def meta(self) -> dict[str, Any]:
        return {
            "device": device_name(self.device),
            "dtype": DTYPE_NAMES[self.dtype],
            "elapsed_ms": round((time.perf_counter() - self.started) * 1e6) / 1000,  # to the microsecond
        }


@functools.cache
def device_name(device: torch.device) -> str:
    return str(device)


def expression_limits(settings: Settings) -> Limits:
    return Limits(settings.expression_max_length, settings.expression_max_nodes, settings.expression_max_depth)


def validate_params(
    spec: ParamsSpec, params: dict[str, Any], where: tuple[str | int, ...] = ("body", "params")
) -> dict[str, Any]:
    """An op's params checked against its registry entry; failures are the usual 422, located
    under ``where``."""
    if not params:  # the defaults, valid by construction: no model to build
        return {param.name: param.default for param in spec.params}
    try:
        validated = params_model(spec).model_validate(params)
    except ValidationError as exc:
        raise request_validation_error(exc, *where) from exc
    # Not model_dump(): it would turn a tensor param still lazy in the parsed body into a dict.
    return {name: getattr(validated, name) for name in type(validated).model_fields}
