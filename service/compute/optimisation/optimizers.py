"""torch.optim optimizers, each a registry entry with its hyper-parameters and their ranges."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import torch

from service.compute.ops.registry import Param, Registry, Rule, defaults


@dataclass(frozen=True, eq=False)
class OptimizerSpec:
    name: str
    cls: type[torch.optim.Optimizer]
    params: tuple[Param, ...]
    doc: str
    elementwise: bool = True
    """Updates each element from its own gradient and state alone, so many starts can share one
    batched parameter and still get exactly the updates of independent runs (lbfgs cannot)."""
    fused: Callable[[torch.Tensor, Mapping[str, Any]], Update] | None = None
    """The update as one fused torch kernel, the one ``cls(..., fused=True)`` runs, without the
    Optimizer's per-step bookkeeping."""
    lean: Callable[[torch.Tensor, Mapping[str, Any]], Update] | None = None
    """The update as the same torch calls that ``cls``'s step makes on a CPU (the same numbers),
    without the Optimizer's per-step bookkeeping."""
    rules: tuple[Rule, ...] = ()

    def defaults(self) -> dict[str, Any]:
        return defaults(self.params)

    def build(self, parameter: torch.Tensor, hyper: Mapping[str, Any]) -> torch.optim.Optimizer:
        kwargs: dict[str, Any] = {
            key: tuple(value) if isinstance(value, list) else value for key, value in hyper.items()
        }
        if kwargs.get("line_search_fn") == "none":
            kwargs["line_search_fn"] = None
        build: Callable[..., torch.optim.Optimizer] = self.cls
        return build([parameter], **kwargs)

    def update(self, parameter: torch.Tensor, hyper: Mapping[str, Any]) -> Update:
        """Steps that take the gradient as an argument: the fused kernel where there is one."""
        if self.fused is not None:
            return self.fused(parameter, hyper)
        if self.lean is not None:
            return self.lean(parameter, hyper)
        return OptimizerUpdate(self.build(parameter, hyper), parameter)


class Update(Protocol):
    """One optimizer step from a given gradient, updating the parameter in place; its state can
    be saved and loaded, to take steps back."""

    capturable: bool
    """Its step can be recorded in a CUDA graph: its state stays in place on the device."""

    def __call__(self, grad: torch.Tensor) -> None: ...

    def save(self) -> Any: ...

    def load(self, saved: Any) -> None: ...


class OptimizerUpdate:
    """A torch.optim optimizer's own step, handed the gradient."""

    capturable = False

    def __init__(self, optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> None:
        self.optimizer, self.parameter = optimizer, parameter

    def __call__(self, grad: torch.Tensor) -> None:
        self.parameter.grad = grad
        self.optimizer.step()

    def save(self) -> dict[str, Any]:
        return _copied(self.optimizer.state[self.parameter])

    def load(self, saved: dict[str, Any]) -> None:
        self.optimizer.state[self.parameter] = _copied(saved)


def _copied(state: Mapping[str, Any]) -> dict[str, Any]:
    """An optimizer's per-parameter state with its tensors cloned, so neither copy moves the other."""
    return {key: value.clone() if isinstance(value, torch.Tensor) else value for key, value in state.items()}


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer")


class FusedAdam:
    """Adam's or AdamW's step as torch.optim's fused implementation runs it: the step count is
    a float32 tensor on the parameter's device, incremented before the kernel."""

    capturable = True

    def __init__(self, kernel: Callable[..., None], parameter: torch.Tensor, hyper: Mapping[str, Any]) -> None:
        self.kernel, self.parameter = kernel, parameter
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(parameter), torch.zeros_like(parameter)
        self.max_exp_avg_sq = [torch.zeros_like(parameter)] if hyper["amsgrad"] else []
        self.step = torch.zeros((), dtype=torch.float32, device=parameter.device)
        self.one = torch.ones((), dtype=torch.float32, device=parameter.device)
        beta1, beta2 = hyper["betas"]
        self.options = {
            "lr": float(hyper["lr"]),
            "beta1": float(beta1),
            "beta2": float(beta2),
            "weight_decay": float(hyper["weight_decay"]),
            "eps": float(hyper["eps"]),
            "amsgrad": bool(hyper["amsgrad"]),
            "maximize": False,
        }

    def __call__(self, grad: torch.Tensor) -> None:
        self.step.add_(self.one)
        self.kernel(
            [self.parameter],
            [grad],
            [self.exp_avg],
            [self.exp_avg_sq],
            self.max_exp_avg_sq,
            [self.step],
            **self.options,
        )

    def state(self) -> list[torch.Tensor]:
        """The state tensors, in the order the compiled kernel takes and returns them."""
        return [self.exp_avg, self.exp_avg_sq, *self.max_exp_avg_sq, self.step]

    def save(self) -> list[torch.Tensor]:
        return [tensor.clone() for tensor in self.state()]

    def load(self, saved: list[torch.Tensor]) -> None:
        for tensor, value in zip(self.state(), saved, strict=True):
            tensor.copy_(value)


class SGDStep:
    """torch.optim.SGD's step as its single-tensor implementation (the one it runs on a CPU)
    takes it, call for call: weight decay, the momentum buffer (the first gradient, then
    decayed), Nesterov's look-ahead, and the parameter update."""

    capturable = False  # the first step differs from the others on the host

    def __init__(self, parameter: torch.Tensor, hyper: Mapping[str, Any]) -> None:
        self.parameter = parameter
        self.lr, self.momentum = float(hyper["lr"]), float(hyper["momentum"])
        self.dampening, self.weight_decay = float(hyper["dampening"]), float(hyper["weight_decay"])
        self.nesterov = bool(hyper["nesterov"])
        self.buffer: torch.Tensor | None = None

    def __call__(self, grad: torch.Tensor) -> None:
        if self.weight_decay != 0:
            grad = grad.add(self.parameter, alpha=self.weight_decay)
        if self.momentum != 0:
            if self.buffer is None:
                self.buffer = grad.detach().clone()
            else:
                self.buffer.mul_(self.momentum).add_(grad, alpha=1 - self.dampening)
            grad = grad.add(self.buffer, alpha=self.momentum) if self.nesterov else self.buffer
        self.parameter.add_(grad, alpha=-self.lr)

    def save(self) -> torch.Tensor | None:
        return None if self.buffer is None else self.buffer.clone()

    def load(self, saved: torch.Tensor | None) -> None:
        self.buffer = None if saved is None else saved.clone()


def lr(default: float) -> Param:
    return Param("lr", default, "Learning rate.", gt=0.0)


BETAS = Param("betas", (0.9, 0.999), "Decay rates of the first and second moment averages.", ge=0.0, lt=1.0)
WEIGHT_DECAY = Param("weight_decay", 0.0, "L2 penalty.", ge=0.0)


def eps(default: float) -> Param:
    return Param("eps", default, "Added to denominators for stability.", gt=0.0)


def _register(name: str, cls: Callable[..., torch.optim.Optimizer], doc: str, *params: Param, **extra: Any) -> None:
    OPTIMIZERS.register(OptimizerSpec(name, cls, params, doc, **extra))  # type: ignore[arg-type]


AMSGRAD = Param("amsgrad", False, "Use the maximum of past second moments.")
_register(
    "sgd",
    torch.optim.SGD,
    "Stochastic gradient descent, with momentum and Nesterov momentum.",
    lr(1e-3),
    Param("momentum", 0.0, "Momentum factor.", ge=0.0),
    Param("dampening", 0.0, "Dampening of momentum.", ge=0.0),
    WEIGHT_DECAY,
    Param("nesterov", False, "Nesterov momentum (needs momentum > 0 and dampening 0)."),
    # torch's SGD raises ValueError otherwise (a NaN momentum passes, as in torch).
    rules=(
        Rule(
            "nesterov",
            "nesterov needs momentum > 0 and dampening 0",
            lambda p: not (p["nesterov"] and (p["momentum"] <= 0 or p["dampening"] != 0)),
        ),
    ),
    lean=SGDStep,
)
_register(
    "adam",
    torch.optim.Adam,
    "Adam.",
    lr(1e-3),
    BETAS,
    eps(1e-8),
    WEIGHT_DECAY,
    AMSGRAD,
    fused=partial(FusedAdam, torch._fused_adam_),
)
_register(
    "adamw",
    torch.optim.AdamW,
    "Adam with decoupled weight decay.",
    lr(1e-3),
    BETAS,
    eps(1e-8),
    Param("weight_decay", 1e-2, "Decoupled weight decay.", ge=0.0),
    AMSGRAD,
    fused=partial(FusedAdam, torch._fused_adamw_),
)
_register(
    "rmsprop",
    torch.optim.RMSprop,
    "RMSprop.",
    lr(1e-2),
    Param("alpha", 0.99, "Smoothing constant.", ge=0.0, le=1.0),
    eps(1e-8),
    WEIGHT_DECAY,
    Param("momentum", 0.0, "Momentum factor.", ge=0.0),
    Param("centered", False, "Normalise by the estimated variance."),
)
_register(
    "adagrad",
    torch.optim.Adagrad,
    "Adagrad.",
    lr(1e-2),
    Param("lr_decay", 0.0, "Learning-rate decay.", ge=0.0),
    WEIGHT_DECAY,
    Param("initial_accumulator_value", 0.0, "Starting sum of squared gradients.", ge=0.0),
    eps(1e-10),
)
_register(
    "adadelta",
    torch.optim.Adadelta,
    "Adadelta.",
    lr(1.0),
    Param("rho", 0.9, "Decay rate of the squared-gradient average.", ge=0.0, le=1.0),
    eps(1e-6),
    WEIGHT_DECAY,
)
_register(
    "adamax", torch.optim.Adamax, "Adamax (Adam with the infinity norm).", lr(2e-3), BETAS, eps(1e-8), WEIGHT_DECAY
)
_register(
    "nadam",
    torch.optim.NAdam,
    "Adam with Nesterov momentum.",
    lr(2e-3),
    BETAS,
    eps(1e-8),
    WEIGHT_DECAY,
    Param("momentum_decay", 4e-3, "Momentum decay.", ge=0.0),
)
_register("radam", torch.optim.RAdam, "Rectified Adam.", lr(1e-3), BETAS, eps(1e-8), WEIGHT_DECAY)
_register(
    "lbfgs",
    torch.optim.LBFGS,
    "L-BFGS; each step runs up to max_iter iterations, with a strong-Wolfe line search by default.",
    lr(1.0),
    Param("max_iter", 20, "Iterations per step.", ge=1, le=1000),
    Param("history_size", 100, "Curvature pairs kept.", ge=1, le=1000),
    Param("tolerance_grad", 1e-7, "Stops a step when the gradient is this small.", ge=0.0),
    Param("tolerance_change", 1e-9, "Stops a step when values change this little.", ge=0.0),
    Param("line_search_fn", "strong_wolfe", "Line search.", choices=("strong_wolfe", "none")),
    elementwise=False,
)
