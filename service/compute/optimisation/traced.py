"""Value-and-gradient functions traced once into a flat graph of torch calls, for loops that
evaluate the same objective thousands of times.

``make_fx`` records what autograd computes for one evaluation (the forward ops and the backward
formulas autograd itself would run) as a graph of ATen calls. The graph is then simplified by
rewrites that change no value of any result, at most the sign of a zero (``x ** 1`` is ``x``,
``x ** 2`` is ``x * x``, a product with the all-ones seed of the backward pass is the other
factor) and replayed without
the autograd engine, which costs most of a small evaluation's time. The user's expression is
evaluated by the expression interpreter during tracing only; the graph holds ATen calls alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.fx
from torch.fx.experimental.proxy_tensor import make_fx

from service.compute.optimisation import machine

aten = torch.ops.aten

TRACING = threading.Lock()
"""make_fx patches module-level state while it traces: one trace at a time in a process."""

# ATen overloads whose torch-level function takes the same arguments and dispatches to them,
# skipping the overload object's Python layer.
_FASTER: dict[Any, Callable[..., Any]] = {
    aten.add.Tensor: torch.add,
    aten.sub.Tensor: torch.sub,
    aten.mul.Tensor: torch.mul,
    aten.div.Tensor: torch.div,
    aten.neg.default: torch.neg,
    aten.pow.Tensor_Scalar: torch.pow,
    aten.pow.Tensor_Tensor: torch.pow,
    aten.exp.default: torch.exp,
    aten.log.default: torch.log,
    aten.sqrt.default: torch.sqrt,
    aten.rsqrt.default: torch.rsqrt,
    aten.sin.default: torch.sin,
    aten.cos.default: torch.cos,
    aten.tanh.default: torch.tanh,
    aten.sigmoid.default: torch.sigmoid,
    aten.abs.default: torch.abs,
    aten.sign.default: torch.sign,
    aten.where.self: torch.where,
    aten.select.int: torch.select,
    aten.sum.default: torch.sum,
    aten.sum.dim_IntList: torch.sum,
    aten.stack.default: torch.stack,
    aten.cat.default: torch.cat,
}


def trace_value_and_grad(
    fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, batched: bool
) -> TracedValueAndGrad:
    """``fn``'s values and gradients at rows of [N, d] parameters, as one replayable graph.

    ``batched``: ``fn`` maps [N, d] to [N] itself; otherwise it maps [d] to a scalar and is
    vectorised with ``torch.func.vmap``. The graph is specialised to ``example``'s shape, dtype
    and device. Raises whatever ``fn`` raises while tracing.
    """
    if batched:

        def joint(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                values = fn(x)
                if not values.requires_grad:
                    return values.detach(), torch.zeros_like(x)
                (grad,) = torch.autograd.grad(values.sum(), x)
            return values.detach(), grad

    else:
        per_row = torch.func.vmap(torch.func.grad_and_value(fn))

        def joint(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            grad, values = per_row(x)
            return values, grad

    # Fake tensors: shapes flow but no numbers, so a Python branch on a value cannot be baked
    # into the graph; it fails the trace, and the caller falls back to plain autograd.
    with TRACING, torch.no_grad():
        graph_module = make_fx(joint, tracing_mode="fake", _allow_non_fake_inputs=True)(example)
    _simplify(graph_module)
    graph_module.recompile()
    return TracedValueAndGrad(graph_module)


def finite_probe(values: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """0 while every value and gradient is finite, NaN once one is not. Each is multiplied by
    zero before summing, so large finite values cannot overflow the sum into a false alarm."""
    return (values * 0).sum() + (grads * 0).sum()


class TracedValueAndGrad:
    """Replays a traced graph: ``traced(x)`` is ``(values, grad)``. It records nothing for
    autograd as long as ``x`` does not require grad (or grad mode is off)."""

    def __init__(self, graph_module: torch.fx.GraphModule) -> None:
        self.graph_module = graph_module
        self.forward = graph_module.forward
        self._programs: dict[tuple[tuple[int, ...], torch.dtype], machine.Program | None] = {}

    def machine_program(self, rows: torch.Tensor) -> machine.Program | None:
        """The graph as the step machine's tape for ``rows`` (made once), or None where the
        machine cannot run it (see ``machine``)."""
        key = (tuple(rows.shape), rows.dtype)
        if key not in self._programs:
            self._programs[key] = machine.program(self.graph_module, rows)
        return self._programs[key]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, grad = self.forward(x)
        return values, grad


def _is_ones(node: Any) -> bool:
    """A tensor of ones: the seed of the backward pass, possibly expanded."""
    if not isinstance(node, torch.fx.Node) or node.op != "call_function":
        return False
    if node.target in (aten.expand.default, aten.view.default, aten._unsafe_view.default):
        return _is_ones(node.args[0])
    return node.target is aten.ones_like.default


def _meta(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _same_layout(a: Any, b: Any) -> bool:
    left, right = _meta(a), _meta(b)
    return (
        isinstance(left, torch.Tensor)
        and isinstance(right, torch.Tensor)
        and left.shape == right.shape
        and left.dtype == right.dtype
    )


# Elementwise ops whose Python-number operand may be a 0-d tensor of the result's dtype instead:
# the same value in the same arithmetic, without wrapping a number into a tensor at every call.
_NUMBER_OPERANDS = {
    aten.add.Tensor: aten.add.Tensor,
    aten.sub.Tensor: aten.sub.Tensor,
    aten.mul.Tensor: aten.mul.Tensor,
    aten.div.Tensor: aten.div.Tensor,
    aten.add.Scalar: aten.add.Tensor,
    aten.sub.Scalar: aten.sub.Tensor,
    aten.mul.Scalar: aten.mul.Tensor,
    aten.div.Scalar: aten.div.Tensor,
}
_NO_OPS = (aten.detach.default, aten.alias.default)


def _simplify(graph_module: torch.fx.GraphModule) -> None:
    """Exact rewrites, constants made once, dead-code elimination, then faster call targets."""
    graph = graph_module.graph
    constants = iter(range(1_000_000))

    def constant(value: torch.Tensor, before: torch.fx.Node) -> torch.fx.Node:
        name = f"_constant_{next(constants)}"
        graph_module.register_buffer(name, value)
        graph_module.__dict__[name] = value  # found before nn.Module's __getattr__: a faster lookup
        with graph.inserting_before(before):
            node = graph.get_attr(name)
        node.meta["val"] = value
        return node

    for node in list(graph.nodes):
        if node.op == "call_function":
            _rewrite(node, constant, partial(getattr, graph_module))
    graph.eliminate_dead_code()
    for node in reversed(list(graph.nodes)):  # outermost sums first
        if node.op == "call_function" and node.target is aten.add.Tensor and node.users:
            _stack_select_backwards(node, graph, constant)
    graph.eliminate_dead_code()
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _FASTER and not node.kwargs:
            node.target = _FASTER[node.target]
    graph.lint()


def _rewrite(
    node: torch.fx.Node,
    constant: Callable[[torch.Tensor, torch.fx.Node], torch.fx.Node],
    fetch: Callable[[str], Any],
) -> None:
    """One node's exact rewrite, if one applies."""
    target, args = node.target, node.args
    result = _meta(node)
    if target in _NO_OPS:
        node.replace_all_uses_with(args[0])  # type: ignore[arg-type]
    elif all(input.op == "get_attr" for input in node.all_input_nodes) and isinstance(target, torch._ops.OpOverload):
        # Only constants in: a constant, made once (unless it is random).
        if torch.Tag.nondeterministic_seeded not in target.tags:
            real = torch.fx.node.map_arg((args, node.kwargs), lambda input: fetch(str(input.target)))
            value = target(*real[0], **real[1])
            if isinstance(value, torch.Tensor):
                node.replace_all_uses_with(constant(value, node))
    elif target is aten.pow.Tensor_Scalar and args[1] in (1, 1.0) and _same_layout(node, args[0]):
        node.replace_all_uses_with(args[0])  # type: ignore[arg-type]
    elif target is aten.pow.Tensor_Scalar and args[1] in (2, 2.0) and _same_layout(node, args[0]):
        node.target, node.args = aten.mul.Tensor, (args[0], args[0])  # torch computes x ** 2 as x * x
    elif target is aten.mul.Tensor and any(_is_ones(a) and _same_layout(node, b) for a, b in (args, args[::-1])):
        node.replace_all_uses_with(args[1] if _is_ones(args[0]) else args[0])  # type: ignore[arg-type]
    elif (
        target in _NUMBER_OPERANDS
        and len(args) == 2
        and isinstance(args[1], (int, float))
        and not isinstance(args[1], bool)
        and not node.kwargs
        and isinstance(result, torch.Tensor)
    ):
        number = torch.tensor(args[1], dtype=result.dtype, device=result.device)
        node.target, node.args = _NUMBER_OPERANDS[target], (args[0], constant(number, node))


def _stack_select_backwards(
    root: torch.fx.Node,
    graph: torch.fx.Graph,
    constant: Callable[[torch.Tensor, torch.fx.Node], torch.fx.Node],
) -> None:
    """A sum of ``select_backward`` terms (the gradient of ``x[..., i]`` uses) built as one stack.

    Each ``select_backward`` makes a zero tensor of the input's shape and writes one slice; their
    sum adds zeros everywhere else. Summing each index's slices in the same order and stacking
    the sums gives the same numbers with a fraction of the calls (a zero's sign aside: the old
    sum turned -0.0 + 0.0 into 0.0).
    """
    leaves: list[torch.fx.Node] = []

    def collect(node: Any, top: bool) -> bool:
        if not isinstance(node, torch.fx.Node) or node.op != "call_function":
            return False
        if node.target is aten.select_backward.default:
            leaves.append(node)
            return True
        summing = node.target is aten.add.Tensor and len(node.args) == 2 and not node.kwargs
        if summing and (top or len(node.users) == 1):
            return collect(node.args[0], False) and collect(node.args[1], False)
        return False

    if not collect(root, True) or len(leaves) < 2:
        return
    shapes = {(tuple(leaf.args[1]), int(leaf.args[2])) for leaf in leaves}  # type: ignore[arg-type]
    if len(shapes) != 1:
        return
    ((shape, dim),) = shapes
    by_index: dict[int, list[torch.fx.Node]] = {}
    for leaf in leaves:
        by_index.setdefault(int(leaf.args[3]) % shape[dim], []).append(leaf)  # type: ignore[arg-type]
    result = _meta(root)
    first = _meta(leaves[0].args[0])
    if not isinstance(result, torch.Tensor) or not isinstance(first, torch.Tensor):
        return
    with graph.inserting_before(root):
        slices: list[Any] = []
        for index in range(shape[dim]):
            terms = [leaf.args[0] for leaf in by_index.get(index, [])]
            if not terms:
                zeros = torch.zeros(first.shape, dtype=first.dtype, device=first.device)
                slices.append(constant(zeros, root))
                continue
            total = terms[0]
            for term in terms[1:]:
                total = graph.call_function(aten.add.Tensor, (total, term))
            slices.append(total)
        stacked = graph.call_function(aten.stack.default, (slices, dim))
    stacked.meta["val"] = result
    root.replace_all_uses_with(stacked)
