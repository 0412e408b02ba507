"""Request and response models. The OpenAPI schema built from them is the API's reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    WithJsonSchema,
    create_model,
    model_validator,
    with_config,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema
from typing_extensions import TypeAliasType, TypedDict

from service.compute.ops.registry import Param, ParamsSpec, Rule

# A tensor param's JSON schema in the catalogs (GET /v1/losses: params), written out inline there.
# The OpenAPI documents the same values with WireTypes below, as named components.
NON_FINITE_SCHEMA: dict[str, Any] = {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}
ENCODED_TENSOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "EncodedTensor",
    "description": "Little-endian, row-major bytes of the tensor, base64-encoded.",
    "properties": {
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "dtype": {"type": "string", "enum": ["float32", "float64", "int64"]},
        "base64": {"type": "string", "contentEncoding": "base64"},
    },
    "required": ["shape", "dtype", "base64"],
    "additionalProperties": False,
}
NESTED_SCHEMA: dict[str, Any] = {
    "type": "array",
    "description": "A rectangular nested array of numbers (shape inferred).",
    "items": {"anyOf": [{"type": "number"}, NON_FINITE_SCHEMA, {"type": "array"}]},
}
TENSOR_SCHEMA: dict[str, Any] = {
    "title": "Tensor",
    "description": "A number (0-d tensor), a rectangular nested array of numbers, or an "
    "encoded object {shape, dtype, base64}. Non-finite values are the strings "
    '"NaN", "Infinity", "-Infinity".',
    "anyOf": [{"type": "number"}, NON_FINITE_SCHEMA, NESTED_SCHEMA, ENCODED_TENSOR_SCHEMA],
}

CatalogTensor = Annotated[Any, WithJsonSchema(TENSOR_SCHEMA)]
"""A tensor param of an op, as its catalog entry's params schema shows it."""


class WireTypes:
    """The wire format's JSON values as types, for the OpenAPI alone. Each becomes a named component
    (``#/components/schemas/Tensor``, ``EncodedTensor``, ...) that the request and response schemas
    reference by $ref, so that client generators (openapi-python-client, openapi-typescript) read
    them whole. Nothing is validated against them (see ``DocumentedAs``)."""

    NonFinite = TypeAliasType(
        "NonFinite",
        Annotated[
            Literal["NaN", "Infinity", "-Infinity"],
            Field(title="NonFinite", description="A non-finite value, written as a string."),
        ],
    )
    NestedTensor = TypeAliasType(
        "NestedTensor",
        Annotated[
            # Not recursive: openapi-python-client cannot read an array whose items refer back to it.
            list[float | NonFinite | list[Any]],
            Field(title="NestedTensor", description=NESTED_SCHEMA["description"]),
        ],
    )

    @with_config(ConfigDict(extra="forbid"))
    class EncodedTensor(TypedDict):
        """Little-endian, row-major bytes of the tensor, base64-encoded."""

        shape: list[Annotated[int, Field(ge=0)]]
        dtype: Literal["float32", "float64", "int64"]
        base64: Annotated[str, Field(json_schema_extra={"contentEncoding": "base64"})]

    Tensor = TypeAliasType(
        "Tensor",
        Annotated[
            float | NonFinite | NestedTensor | EncodedTensor,
            Field(title="Tensor", description=TENSOR_SCHEMA["description"]),
        ],
    )

    @with_config(ConfigDict(extra="forbid"))
    class TensorShape(TypedDict):
        """What a dry run returns in place of a tensor: its shape and dtype."""

        shape: list[Annotated[int, Field(ge=0)]]
        dtype: str

    DerivativeOut = TypeAliasType(
        "DerivativeOut",
        Annotated[
            Tensor | TensorShape,
            Field(title="DerivativeOut", description="A result tensor, or with dry_run its shape and dtype."),
        ],
    )
    Point = TypeAliasType(
        "Point",
        Annotated[
            list[float | list[Any]],
            Field(
                title="Point",
                description="A point in the variable's shape: a list of numbers for a vector [d], nested lists "
                "for a tensor with more dimensions.",
            ),
        ],
    )


def _unchanged(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class DocumentedAs:
    """Field metadata: validate as the annotated type (``Any``: the value passes through
    unchanged), but document the field as ``documented`` in both JSON schema modes (requests and
    responses), its named types as $refs to components."""

    documented: Any

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        documented = handler.generate_schema(self.documented)
        return core_schema.no_info_before_validator_function(
            _unchanged,
            handler(source),
            json_schema_input_schema=documented,
            serialization=core_schema.plain_serializer_function_ser_schema(_unchanged, return_schema=documented),
        )


# Tensors are validated by service.compute.wire (with positions in the messages and without
# walking a million numbers in Python), so pydantic passes them through untouched.
Tensor = Annotated[Any, DocumentedAs(WireTypes.Tensor)]
TensorOut = Tensor
"""A response tensor: the same forms as a request's."""

DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"


class ComputeRequest(BaseModel):
    """Fields every compute endpoint takes."""

    model_config = ConfigDict(extra="forbid", strict=True)

    dtype: Literal["float32", "float64"] = Field(
        "float32", description="Floating inputs are cast to it; results come back in it."
    )
    device: str = Field(
        "auto",
        pattern=DEVICE_PATTERN,
        description="auto (the server's default: its first GPU if any, else cpu), cpu, cuda, cuda:N.",
    )
    encoding: Literal["json", "base64"] = Field(
        "json", description="How response tensors are written: nested arrays or base64 objects."
    )


class Meta(BaseModel):
    device: str = Field(description="The device actually used.")
    dtype: str
    elapsed_ms: float = Field(description="Time spent computing, decoding and encoding.")


class ActivationRequest(ComputeRequest):
    input: Tensor = Field(description="The points to evaluate the activation at.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="The activation's parameters (see GET /v1/activations)."
    )
    grad_output: Tensor | None = Field(
        None, description="Cotangent for the vector-Jacobian product; ones when omitted."
    )
    second_order: bool = Field(False, description="Also return the elementwise f''.")
    jacobian: bool = Field(False, description="Also return d output / d input.")
    tangent: Tensor | None = Field(
        None, description="A direction of the input's shape: also return the Jacobian-vector product along it."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"input": [-2.0, 0.0, 2.0], "second_order": True},
                {"input": [1.0, 2.0, 3.0], "params": {"dim": 0}, "jacobian": True},
                {"input": [1.0, 2.0, 3.0], "params": {"dim": 0}, "tangent": [1.0, 0.0, 0.0]},
            ]
        }
    )


class ActivationResponse(BaseModel):
    output: TensorOut
    grad: TensorOut = Field(description="grad_output^T (d output / d input).")
    grad2: TensorOut | None = Field(description="Elementwise second derivative, when asked.")
    jacobian: TensorOut | None = Field(description="Shape output.shape + input.shape.")
    jvp: TensorOut | None = Field(None, description="(d output / d input) tangent, when a tangent is sent.")
    meta: Meta


class ActivationInfo(BaseModel):
    name: str
    formula: str
    params: dict[str, Any] = Field(description="JSON schema of the params object.")
    elementwise: bool


class ActivationCatalog(BaseModel):
    activations: list[ActivationInfo]


class LossRequest(ComputeRequest):
    input: Tensor = Field(description="Predictions: logits, probabilities or values, per the loss.")
    target: Tensor | None = Field(
        None, description="Class indices or float targets (see the loss's `target` in GET /v1/losses)."
    )
    weight: Tensor | None = Field(
        None, description="Class weights [C] (cross_entropy, nll) or elementwise weights (BCE)."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="reduction and the loss's own options (see GET /v1/losses)."
    )
    grad_output: Tensor | None = Field(None, description="Cotangent of the loss (its shape); ones when omitted.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"input": [[2.0, 1.0, 0.1]], "target": [0]},
                {"input": [0.5, 1.5], "target": [1.0, 1.0], "params": {"reduction": "sum"}},
                {"input": [0.25, 0.25, 0.5], "params": {"base": "2"}},
            ]
        }
    )


class LossGrads(BaseModel):
    input: TensorOut | None
    target: TensorOut | None = Field(description="null where torch cannot differentiate the target.")
    weight: TensorOut | None = Field(description="null without a weight, or where torch cannot.")


class LossResponse(BaseModel):
    loss: TensorOut
    grad: LossGrads
    meta: Meta


class LossInfo(BaseModel):
    name: str
    formula: str
    params: dict[str, Any] = Field(description="JSON schema of the params object.")
    target: Literal["float", "index", "float_or_index", "none"]
    weight: Literal["class", "elementwise", "none"]


class LossCatalog(BaseModel):
    losses: list[LossInfo]


DerivativeName = Literal["grad", "jacobian", "hessian", "jvp", "hvp"]
DerivativeOut = Annotated[Any, DocumentedAs(WireTypes.DerivativeOut)]


class DifferentiateRequest(ComputeRequest):
    expression: str = Field(
        description="The formula: `name = expr` lines, then the expression to differentiate. "
        "GET /v1/functions lists the functions it may call."
    )
    inputs: dict[str, Tensor] = Field(
        default_factory=dict, description="Named tensors the expression reads (int64 base64 ones stay integers)."
    )
    wrt: list[str] | None = Field(None, description="Inputs to differentiate w.r.t.; default every floating one.")
    derivatives: list[DerivativeName] = Field(
        default_factory=lambda: list[DerivativeName](["grad"]), description="Which derivatives to return."
    )
    grad_output: Tensor | None = Field(
        None,
        description="Cotangent of the value's shape: for grad (ones by default), and for hvp of a non-scalar value "
        "(the Hessian of grad_output . value).",
    )
    tangents: dict[str, Tensor] | None = Field(
        None,
        description="Directions for jvp and hvp: {wrt input: tensor of its shape}; inputs left out get zeros.",
    )
    batch: list[str] | None = Field(
        None,
        description="Inputs whose leading dimension is a batch of points: the formula is written for one point, "
        "and the value and every derivative gain that leading dimension (as torch.func.vmap); grad_output and "
        "tangents are then per point too.",
    )
    dry_run: bool = Field(
        False,
        description="Compute nothing: return each result's shape and dtype, and the estimated cost.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "expression": "(x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2",
                    "inputs": {"x": [1.0, 2.0]},
                    "derivatives": ["grad", "hessian"],
                },
                {
                    "expression": "o = sigmoid(x @ w.T)\nmse(o, ones_like(o))",
                    "inputs": {"x": [[0.5, -1.0, 2.0]], "w": [[0.1, 0.2, 0.3], [-0.3, 0.2, 0.1]]},
                    "wrt": ["w"],
                },
                {
                    "expression": "(x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2",
                    "inputs": {"x": [3.0, 2.0]},
                    "derivatives": ["jvp", "hvp"],
                    "tangents": {"x": [1.0, 0.0]},
                },
                {
                    "expression": "(x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2",
                    "inputs": {"x": [[3.0, 2.0], [0.0, 0.0], [-2.805118, 3.131312]]},
                    "batch": ["x"],
                    "derivatives": ["grad", "hessian"],
                },
                {
                    "expression": "sum(W @ W @ W)",
                    "inputs": {"W": [[1.0, 2.0], [3.0, 4.0]]},
                    "dry_run": True,
                },
            ]
        }
    )


class Cost(BaseModel):
    flops: int = Field(
        description="Estimated work: multiply-adds of matrix products, and one per element each other "
        "operation reads or writes."
    )
    bytes: int = Field(description="Estimated peak memory of the tensors alive at once, inputs included.")


class DifferentiateResponse(BaseModel):
    value: DerivativeOut
    grad: dict[str, DerivativeOut] | None = Field(description="Per wrt input: the vector-Jacobian product.")
    jacobian: dict[str, DerivativeOut] | None = Field(description="Per input: value.shape + input.shape.")
    hessian: dict[str, dict[str, DerivativeOut]] | None = Field(description="Blocks per pair of wrt inputs.")
    jvp: DerivativeOut | None = Field(None, description="The Jacobian-vector product along tangents (value's shape).")
    hvp: dict[str, DerivativeOut] | None = Field(
        None,
        description="Per wrt input: the Hessian of the scalar value (or of grad_output . value) times the tangents.",
    )
    cost: Cost | None = Field(None, description="A dry run's estimate of the work and peak memory.")
    meta: Meta


class FunctionInfo(BaseModel):
    name: str
    signature: str
    doc: str
    category: Literal["math", "activation", "loss"]


class FunctionCatalog(BaseModel):
    functions: list[FunctionInfo]
    operators: list[str]


class ExpressionObjective(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    expression: str = Field(description="A scalar-valued expression (see POST /v1/differentiate).")
    variable: str = Field(
        "x", description="The input being optimised; the expression sees it in the shape of x0 (a row of starts)."
    )
    inputs: dict[str, Tensor] = Field(default_factory=dict, description="Inputs held constant.")


class OptimizerChoice(BaseModel):
    """An optimizer by name with any of its hyper-parameters (GET /v1/optimizers)."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: str


OptimizerField = str | OptimizerChoice | Annotated[list[str | OptimizerChoice], Field(min_length=1)]


class OptimizeRequest(ComputeRequest):
    objective: str | ExpressionObjective = Field(description="A name from GET /v1/objectives, or an expression.")
    x0: Tensor | None = Field(
        None,
        description="One start, in the variable's shape: a point [d], or a tensor with more dimensions (a "
        "weight matrix [m, n], ...). A named objective of a fixed dimension d takes [d] only; one of any "
        "dimension takes any shape, as its flattened vector.",
    )
    starts: Tensor | None = Field(
        None,
        description="Several starts: shape [N, *shape], N points of the variable's shape ([N, d] for vectors; "
        "a list of points, or base64).",
    )
    optimizer: OptimizerField = Field("adam", description="One optimizer or several; one run per start and each.")
    steps: int = Field(20_000, ge=0, description="Optimizer steps per run.")
    record_every: int = Field(2_000, ge=1, description="Trajectory sampling interval, in steps.")
    tolerance: float | None = Field(
        None, ge=0, description="Stop a run once its gradient norm (Euclidean, over every element) is at most this."
    )
    report: Literal["runs", "summary"] = Field(
        "runs",
        description="runs: every run with its trajectory. summary: the final points, values and step counts as "
        "tensors [runs, *shape], [runs] and [runs] (row i: start i // k with the i % k-th of the k optimizers "
        "listed), the count of each stop reason, and how many runs reached each known minimum (for basins of "
        "attraction).",
    )
    reach_tolerance: float = Field(
        1e-3, gt=0, description="Distance (Euclidean, over every element) within which a run has reached a minimum."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "objective": "himmelblau",
                    "starts": [[1.0, 0.0], [-4.0, 0.0], [4.0, 0.0]],
                    "optimizer": {"name": "adam", "lr": 0.001},
                    "steps": 20000,
                    "record_every": 2000,
                    "dtype": "float64",
                },
                {
                    "objective": {"expression": "sum((x - c) ** 2)", "variable": "x", "inputs": {"c": [1.0, 2.0]}},
                    "x0": [0.0, 0.0],
                    "optimizer": ["sgd", {"name": "lbfgs"}],
                    "steps": 50,
                    "tolerance": 1e-8,
                },
                {
                    "objective": {
                        "expression": "mse(sigmoid(x @ w.T), y)",
                        "variable": "w",
                        "inputs": {
                            "x": [[0.5, -1.2, 0.3, 0.8, -0.4, 1.1, -0.7, 0.2, 0.9, 1.5]],
                            "y": [[1.0, 1.0]],
                        },
                    },
                    "x0": [[0.0] * 10, [0.0] * 10],
                    "optimizer": {"name": "adam", "lr": 0.1},
                    "steps": 200,
                    "record_every": 50,
                    "dtype": "float64",
                },
            ]
        }
    )


class LandscapeRequest(ComputeRequest):
    objective: str | ExpressionObjective
    x_range: Annotated[list[float], Field(min_length=2, max_length=2)] = Field(description="[lo, hi] of x.")
    y_range: Annotated[list[float], Field(min_length=2, max_length=2)] = Field(description="[lo, hi] of y.")
    resolution: int | Annotated[list[int], Field(min_length=2, max_length=2)] = Field(
        100, description="Points per axis, or [nx, ny]."
    )
    gradient: bool = Field(False, description="Also return the gradient at every grid point.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"objective": "himmelblau", "x_range": [-6, 6], "y_range": [-6, 6], "resolution": 60}]
        }
    )


WireFloat = Annotated[float | str, DocumentedAs(float | WireTypes.NonFinite)]
"""A number, non-finite values as the strings "NaN", "Infinity", "-Infinity"."""


class KnownMinimum(BaseModel):
    x: list[float]
    value: float


class ObjectiveInfo(BaseModel):
    name: str
    formula: str
    dimension: int | None = Field(
        description="The fixed dimension d (starts are points [d]), or null for any d >= 1 (shown here at d = 2; "
        "a start of more dimensions is taken as its flattened vector)."
    )
    domain: list[list[float]] = Field(description="[lo, hi] per coordinate: the box for plots and random starts.")
    minima: list[KnownMinimum] = Field(description="Known global minima (for himmelblau, all four).")


class ObjectiveCatalog(BaseModel):
    objectives: list[ObjectiveInfo]


class OptimizerInfo(BaseModel):
    name: str
    doc: str
    params: dict[str, Any] = Field(description="JSON schema of the optimizer's hyper-parameters.")


class OptimizerCatalog(BaseModel):
    optimizers: list[OptimizerInfo]


Point = Annotated[Any, DocumentedAs(WireTypes.Point)]


class NearestMinimum(BaseModel):
    x: Point = Field(description="The known minimum, in the variable's shape.")
    value: float
    distance: WireFloat = Field(description="Euclidean distance (over every element) from the run's end.")


class TrajectoryOut(BaseModel):
    step: list[int]
    x: list[TensorOut] = Field(description="The run's point at each step, in the variable's shape.")
    value: list[WireFloat]


class RunResult(BaseModel):
    start: int = Field(description="Index of the run's start.")
    optimizer: dict[str, Any] = Field(description="The optimizer's name and every hyper-parameter it ran with.")
    x0: TensorOut = Field(description="The run's start, in the variable's shape.")
    x: TensorOut = Field(description="Where the run ended, in the variable's shape.")
    value: WireFloat
    grad_norm: WireFloat = Field(description="The gradient's Euclidean norm (over every element) at x.")
    steps: int
    stopped: Literal["max_steps", "tolerance", "diverged", "deadline"]
    trajectory: TrajectoryOut = Field(description="Every record_every-th point, and the end.")
    nearest_minimum: NearestMinimum | None = Field(description="For a catalog objective; null for a formula.")


class Basin(BaseModel):
    x: Point = Field(description="The known minimum, in the variable's shape.")
    value: float
    count: int = Field(description="Runs that ended within reach_tolerance of this minimum (and nearest it).")


class RunSummary(BaseModel):
    optimizers: list[str]
    x: TensorOut = Field(
        description="Final points [runs, *shape] (each in the variable's shape); row i: start i // k with the "
        "i % k-th optimizer."
    )
    value: TensorOut = Field(description="Final values [runs].")
    steps: TensorOut = Field(description="Steps taken [runs].")
    stopped: dict[str, int] = Field(description="How many runs stopped for each reason.")
    minima: list[Basin] | None = Field(description="For a catalog objective; null for a formula.")


class OptimizeResponse(BaseModel):
    runs: list[RunResult] | None = Field(None, description="With report=runs: one per start and optimizer.")
    summary: RunSummary | None = Field(None, description="With report=summary.")
    meta: Meta


class LandscapeResponse(BaseModel):
    x: TensorOut = Field(description="The grid's x coordinates [nx].")
    y: TensorOut = Field(description="The grid's y coordinates [ny].")
    z: TensorOut = Field(description="Values [ny, nx].")
    grad: TensorOut | None = Field(description="Gradients [ny, nx, 2], when asked.")
    meta: Meta


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A snake_case error type, stable for clients to branch on.")
    message: str = Field(description="A human sentence saying what was wrong.")


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["ready", "starting", "draining"]


class Info(BaseModel):
    name: str
    version: str
    torch_version: str
    python_version: str
    devices: list[str]
    default_device: str
    dtypes: list[str]
    encodings: list[str]
    limits: dict[str, int | float]


PARAMS_DESCRIPTION = (
    "Numbers lie within float32's range and integers within int64's, whatever the dtype: torch refuses "
    "larger ones (float parameters of activations and optimizers for float32 inputs)."
)


@cache
def params_model(spec: ParamsSpec) -> type[BaseModel]:
    """A strict pydantic model of one op's params, built from its registry entry: each param's
    bounds, then the entry's rules."""
    fields: dict[str, Any] = {param.name: _param_field(param) for param in spec.params}
    validators: dict[str, Any] = (
        {"rules": model_validator(mode="after")(_rules_check(spec.rules))} if spec.rules else {}
    )
    return create_model(
        f"{spec.name.title().replace('_', '')}Params",
        __config__=ConfigDict(extra="forbid", strict=True),
        __doc__=PARAMS_DESCRIPTION,
        __validators__=validators,
        **fields,
    )


def _rules_check(rules: tuple[Rule, ...]) -> Callable[[BaseModel], BaseModel]:
    """A validator failing with one error per broken rule, located at the param it names."""

    def check(model: BaseModel) -> BaseModel:
        values = {name: getattr(model, name) for name in type(model).model_fields}
        errors = [
            InitErrorDetails(
                type=PydanticCustomError("param_rule", rule.message), loc=(rule.param,), input=values[rule.param]
            )
            for rule in rules
            if not rule.holds(values)
        ]
        if errors:
            raise ValidationError.from_exception_data(type(model).__name__, errors)
        return model

    return check


def _param_field(param: Param) -> tuple[Any, Any]:
    annotation: Any
    constraints: dict[str, Any] = param.bounds()
    if param.tensor:
        annotation = CatalogTensor | None
    elif isinstance(param.default, tuple):
        length = len(param.default)
        element = Annotated[float, Field(**constraints)]
        annotation = Annotated[list[element], Field(min_length=length, max_length=length)]
        constraints = {}
    elif param.choices:
        annotation = Literal[param.choices]
    else:
        annotation = param.python_type
    return annotation, Field(param.default, description=param.description, **constraints)


def params_schema(spec: ParamsSpec) -> dict[str, Any]:
    return params_model(spec).model_json_schema()
