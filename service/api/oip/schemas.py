"""The Open Inference Protocol's JSON objects (v2, as KServe and Triton speak it), as pydantic
models: the inference request is validated with them, and the OpenAPI documents them all."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from service.compute.wire import MAX_RANK

ParameterValue = StrictBool | StrictInt | StrictFloat | StrictStr
Parameters = dict[str, ParameterValue]
Dimension = Annotated[int, Field(ge=0)]
MAX_TENSORS = 64
"""The most inputs, or outputs asked for, one request may name."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RequestInput(_Strict):
    name: str = Field(description="An input the model's metadata lists.")
    shape: list[Dimension] = Field(max_length=MAX_RANK, description="The tensor's shape; [] for a single number.")
    datatype: str = Field(description="FP32 or FP64 (INT64 or INT32 for class indices).")
    parameters: Parameters = Field(
        default_factory=dict, description="binary_data_size: the tensor's bytes follow the JSON header."
    )
    data: Any = Field(None, description="The elements, flat in row-major order or nested; absent when binary.")


class RequestOutput(_Strict):
    name: str = Field(description="An output the model's metadata lists.")
    parameters: Parameters = Field(default_factory=dict, description="binary_data: return it as binary data.")


class InferenceRequest(_Strict):
    """The inference request object (the JSON header, when binary tensors follow it)."""

    id: str | None = Field(None, description="Echoed in the response.")
    model_name: str | None = Field(None, description="Ignored: the path names the model.")
    model_version: str | None = Field(None, description="Ignored: the path names the version.")
    parameters: Parameters = Field(
        default_factory=dict,
        description="binary_data_output, second_order (activations), and the model's own parameters "
        "(alpha, dim, reduction, ...).",
    )
    inputs: list[RequestInput] = Field(min_length=1, max_length=MAX_TENSORS)
    outputs: list[RequestOutput] | None = Field(
        None, max_length=MAX_TENSORS, description="The outputs to return; all of them when absent."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "inputs": [{"name": "input", "shape": [3], "datatype": "FP32", "data": [-2.0, 0.0, 2.0]}],
                    "parameters": {"second_order": True},
                }
            ]
        }
    )


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = Field(None, description="binary_data_size, for an output sent as binary data.")
    data: list[Any] | None = Field(None, description="The elements, flat in row-major order; absent when binary.")


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a dimension of any size; [-1] for a tensor of any shape.")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class OipError(BaseModel):
    """The protocol's error object: every error under /v2 has this body."""

    error: str
