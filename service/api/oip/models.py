"""The models the Open Inference Protocol serves: every activation, every loss and every saved
formula, each described by its metadata and computed by the compute core's own functions
(``evaluate_activation``, ``evaluate_loss``, ``differentiate``): nothing is recomputed here."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from service.api.endpoints import ComputeContext, expression_limits, validate_params
from service.api.oip.schemas import MetadataTensor, ModelMetadata
from service.compute.budgets import META, check_cost
from service.compute.expressions.differentiate import Signature, differentiate, dry_run
from service.compute.expressions.saved import check_inputs, compute_dtype, saved_program, torch_dtype
from service.compute.ops.activations import ACTIVATIONS, ActivationSpec, evaluate_activation
from service.compute.ops.losses import LOSSES, LossSpec, evaluate_loss
from service.compute.runtime import torch_errors
from service.compute.wire import ElementBudget
from service.config import Settings
from service.errors import InvalidInput, NotFound, ServiceError
from service.store import NAME_PATTERN, FormulaStore, SavedFormula

FLOATS = frozenset({"FP32", "FP64"})
INDICES = frozenset({"INT64", "INT32"})
ANY_SHAPE = (-1,)
IGNORED_PARAMETERS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}
)
"""Request parameters of the protocol (or of Triton's client) that are no model's parameters."""
Tensors = dict[str, torch.Tensor | None]
FORMULA_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatypes: frozenset[str]
    """Those a request may send (the metadata shows the first in FP32, FP64, INT64, INT32 order)."""
    shape: tuple[int, ...] = ANY_SHAPE
    optional: bool = False

    def public(self) -> MetadataTensor:
        shown = next(name for name in ("FP32", "FP64", "INT64", "INT32") if name in self.datatypes)
        return MetadataTensor(name=self.name, datatype=shown, shape=list(self.shape))


@dataclass(frozen=True)
class Setup:
    """Where and under which limits a request computes."""

    settings: Settings
    device: torch.device


class Model:
    """One served model: its metadata, and ``compute`` (every output it can give for a request,
    None where it has none), behind the checks every model shares."""

    name: str
    version = "1"
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def described(self, settings: Settings) -> ModelMetadata:
        """The metadata GET /v2/models/{name} answers."""
        return ModelMetadata(
            name=self.name,
            versions=[self.version],
            platform=self.platform,
            inputs=[info.public() for info in self.inputs],
            outputs=[info.public() for info in self.outputs],
        )

    def infer(
        self, tensors: dict[str, torch.Tensor], parameters: Mapping[str, Any], wanted: list[str] | None, setup: Setup
    ) -> dict[str, torch.Tensor]:
        """The outputs ``wanted`` (all it has for this request when None), in that order, for
        inputs passed by ``check``."""
        params = {key: value for key, value in parameters.items() if key not in IGNORED_PARAMETERS}
        moved = {name: tensor.to(setup.device) for name, tensor in tensors.items()}
        results = self.compute(moved, params, None if wanted is None else frozenset(wanted), setup)
        if wanted is None:
            return {name: tensor for name, tensor in results.items() if tensor is not None}
        chosen = {}
        for name in wanted:
            tensor = results.get(name)
            if tensor is None:
                raise InvalidInput(
                    f"The model {self.name!r} has no output {name!r} for this request "
                    "(a gradient torch does not give for these inputs, or one not asked for).",
                    error_type="unavailable_output",
                )
            chosen[name] = tensor
        return chosen

    def compute(
        self, tensors: dict[str, torch.Tensor], params: dict[str, Any], wanted: frozenset[str] | None, setup: Setup
    ) -> Tensors:
        raise NotImplementedError

    def check(self, datatypes: Mapping[str, str], wanted: list[str] | None) -> None:
        """Refuse (400) inputs this model does not have or needs, of a datatype it does not take,
        and outputs it does not have; before any tensor is decoded."""
        known = {info.name: info for info in self.inputs}
        for name, datatype in datatypes.items():
            info = known.get(name)
            if info is None:
                raise InvalidInput(
                    f"The model {self.name!r} has no input {name!r}; its inputs are {', '.join(known)}.",
                    error_type="unknown_name",
                    where=name,
                )
            if datatype not in info.datatypes:
                raise InvalidInput(
                    f"Input {name!r} of {self.name!r} takes {' or '.join(sorted(info.datatypes))}, not {datatype}.",
                    error_type="invalid_dtype",
                    where=name,
                )
        missing = [info.name for info in self.inputs if not info.optional and info.name not in datatypes]
        if missing:
            raise InvalidInput(
                f"The model {self.name!r} needs the input(s) {', '.join(missing)}.", error_type="missing_input"
            )
        outputs = [info.name for info in self.outputs]
        for name in wanted or ():
            if name not in outputs:
                raise InvalidInput(
                    f"The model {self.name!r} has no output {name!r}; its outputs are {', '.join(outputs)}.",
                    error_type="unknown_name",
                    where=name,
                )
        if wanted is not None and len(set(wanted)) != len(wanted):
            raise InvalidInput("An output is asked for twice.", error_type="invalid_input")


class ActivationModel(Model):
    """``output`` = f(input), ``grad`` = its VJP with ones (f' for elementwise ones), ``grad2`` =
    f'' on request (``second_order``, or asking for it): as POST /v1/activations answers."""

    platform = "pytorch_activation"

    def __init__(self, spec: ActivationSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.inputs = (TensorInfo("input", FLOATS),)
        names = ("output", "grad", "grad2") if spec.elementwise else ("output", "grad")
        self.outputs = tuple(TensorInfo(name, FLOATS) for name in names)

    def compute(
        self, tensors: dict[str, torch.Tensor], params: dict[str, Any], wanted: frozenset[str] | None, setup: Setup
    ) -> Tensors:
        second_order = params.pop("second_order", False)
        if not isinstance(second_order, bool):
            raise InvalidInput("second_order must be true or false.", error_type="invalid_param", param="second_order")
        result = evaluate_activation(
            self.spec,
            tensors["input"],
            validate_params(self.spec, params, ("parameters",)),
            second_order=second_order or (wanted is not None and "grad2" in wanted),
            max_jacobian_elements=setup.settings.max_jacobian_elements,
        )
        return {"output": result.output, "grad": result.grad, "grad2": result.grad2}


class LossModel(Model):
    """``loss``, and its gradients ``grad_input``, ``grad_target`` and ``grad_weight`` wherever
    torch has them: as POST /v1/losses answers (``reduction`` and the rest as parameters)."""

    platform = "pytorch_loss"

    def __init__(self, spec: LossSpec) -> None:
        self.spec = spec
        self.name = spec.name
        targets = {"float": FLOATS, "index": INDICES, "float_or_index": FLOATS | INDICES}
        inputs = [TensorInfo("input", FLOATS)]
        if spec.target != "none":
            inputs.append(TensorInfo("target", targets[spec.target]))
        if spec.weight != "none":
            inputs.append(TensorInfo("weight", FLOATS, optional=True))
        self.inputs = tuple(inputs)
        grads = frozenset().union(*spec.differentiable.values())
        names = ["loss"] + [f"grad_{name}" for name in ("input", "target", "weight") if name in grads]
        self.outputs = tuple(TensorInfo(name, FLOATS) for name in names)

    def compute(
        self, tensors: dict[str, torch.Tensor], params: dict[str, Any], wanted: frozenset[str] | None, setup: Setup
    ) -> Tensors:
        x = tensors["input"]
        weight = tensors.get("weight")
        ctx = ComputeContext(x.device, x.dtype, "json", ElementBudget(setup.settings.max_elements))
        validated = validate_params(self.spec, params, ("parameters",))
        result = evaluate_loss(
            self.spec,
            x,
            tensors.get("target"),
            None if weight is None else weight.to(x.dtype),
            ctx.tensor_params(self.spec, validated),
        )
        return {"loss": result.loss, **{f"grad_{name}": grad for name, grad in result.grads.items()}}


class FormulaModel(Model):
    """A saved formula: ``value``, and ``grad_<input>`` (the VJP with ones: the gradient of a
    scalar value) for each input, as POST /v1/formulas/{name}/differentiate computes them."""

    platform = "pytorch_formula"

    def __init__(self, formula: SavedFormula) -> None:
        self.formula = formula
        self.name = formula.name
        self.version = str(formula.version)
        self.inputs = tuple(
            TensorInfo(name, frozenset({"FP64" if spec.dtype == "float64" else "FP32"}), spec.shape)
            for name, spec in formula.inputs.items()
        )
        value = TensorInfo("value", frozenset({"FP64" if formula.dtype == "float64" else "FP32"}))
        self.outputs = (value, *(TensorInfo(f"grad_{info.name}", info.datatypes, info.shape) for info in self.inputs))

    def described(self, settings: Settings) -> ModelMetadata:
        """The metadata, with the value's shape at the declared input shapes (a dry run on the meta
        device, cached; any size where the limits now refuse the formula)."""
        formula = self.formula
        inputs = {
            name: torch.empty(spec.shape, dtype=torch_dtype(spec), device=META) for name, spec in formula.inputs.items()
        }
        signature = Signature.of(
            formula.expression,
            compute_dtype(formula.inputs),
            inputs,
            (),
            (),
            max_entries=0,
            max_elements=settings.max_elements,
            limits=expression_limits(settings),
        )
        metadata = super().described(settings)
        try:
            with torch_errors("the formula"):
                metadata.outputs[0].shape = list(dry_run(signature)[0].value.shape)
        except ServiceError:
            pass
        return metadata

    def compute(
        self, tensors: dict[str, torch.Tensor], params: dict[str, Any], wanted: frozenset[str] | None, setup: Setup
    ) -> Tensors:
        if params:
            raise InvalidInput(
                f"A formula takes no parameters (got {', '.join(sorted(params))}).", error_type="invalid_param"
            )
        formula, settings = self.formula, setup.settings
        check_inputs(formula, tensors)
        dtype = compute_dtype(formula.inputs)
        limits = expression_limits(settings)
        program = saved_program(formula, dtype, setup.device, limits, settings.max_elements)
        inputs = {name: tensors[name] for name in formula.inputs}  # each of its declared dtype, as /v1 takes them
        wrt = [name for name in formula.inputs if wanted is None or f"grad_{name}" in wanted]
        derivatives: tuple[Any, ...] = ("grad",) if wrt else ()
        signature = Signature.of(
            formula.expression,
            dtype,
            inputs,
            wrt,
            derivatives,
            max_entries=settings.max_jacobian_elements,
            max_elements=settings.max_elements,
            limits=limits,
        )
        check_cost(dry_run(signature)[1], max_flops=settings.max_flops, max_elements=settings.max_elements)
        result = differentiate(program, inputs, wrt, derivatives, max_entries=settings.max_jacobian_elements)
        grads = {f"grad_{name}": grad for name, grad in (result.grad or {}).items()}
        return {"value": result.value, **grads}


@functools.cache
def _builtin(name: str) -> Model:
    """The model of a known activation or loss (cached: only registry names reach here)."""
    return ActivationModel(ACTIVATIONS.get(name)) if name in ACTIVATIONS else LossModel(LOSSES.get(name))


def is_builtin(name: str) -> bool:
    """An activation or a loss: known without the database, light enough to compute inline."""
    return name in ACTIVATIONS or name in LOSSES


def find_model(name: str, version: str | None, formulas: FormulaStore) -> Model:
    """The model ``name`` (at ``version``, if given): an activation, a loss, or a saved formula
    (read from the database). 404 for any other."""
    model: Model | None = None
    if is_builtin(name):
        model = _builtin(name)
    elif FORMULA_NAME.fullmatch(name):  # no other name can be saved: no need to ask the database
        formula = formulas.get(name)
        model = None if formula is None else FormulaModel(formula)
    if model is None:
        raise NotFound(
            f"There is no model named {name!r}: models are the activations, the losses and the saved formulas "
            "(GET /v1/activations, /v1/losses, /v1/formulas).",
            error_type="unknown_model",
        )
    if version is not None and version != model.version:
        raise NotFound(
            f"The model {name!r} has no version {version!r}; its version is {model.version}.",
            error_type="unknown_model",
        )
    return model
