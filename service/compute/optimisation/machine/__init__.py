"""The step machine: a traced objective of a few starts evaluated in one C call.

A traced objective (see ``traced``) of a few starts costs a torch call per operation, a
microsecond or more each, whatever the size of its tensors: a Himmelblau step is about 20 of
them. The step machine turns the traced graph into a tape of instructions over small buffers,
once per graph, and a C function (``machine.c``) runs the tape and looks at the rows (finite
values and gradients, the tolerance) in one call. The optimizer's step stays torch's own
(``torch._fused_adam_`` for Adam and AdamW, torch.optim.SGD's arithmetic for SGD), so a step
costs a few microseconds, and nothing is compiled per objective: a formula never seen before
is as fast as a catalog objective from its first request.

The tape supports the graphs of elementwise formulas: arithmetic, the usual functions and their
backward formulas, comparisons and ``where``, indexing and slicing, broadcasting, stacking,
sums and means; anything else (a matrix product, an integer tensor) leaves the graph to torch.
Arithmetic (+, -, *, /, integer powers, sqrt) rounds exactly as torch's does; the C maths
library's exp, log, sin... may differ from torch's vectorised ones in the last bit.

The C file is built with the machine's C compiler the first time it is needed (about two
seconds) into a cache folder, or ahead of time with ``python -m service.compute.optimisation.machine``
(scripts/setup and the container image do). Without a compiler the torch steps run as before.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
SOURCES = (HERE / "machine.c", HERE / "machine_body.h")

MAXDIM = 4
WIDTH = 32
FIELDS = {
    "F_OP": 0,
    "F_KEPT": 1,
    "F_SHAPE": 2,
    "F_OUT": 6,
    "F_OUT_OFFSET": 7,
    "F_OUT_STRIDES": 8,
    "F_A": 12,
    "F_A_OFFSET": 13,
    "F_A_STRIDES": 14,
    "F_B": 18,
    "F_B_OFFSET": 19,
    "F_B_STRIDES": 20,
    "F_C": 24,
    "F_C_OFFSET": 25,
    "F_C_STRIDES": 26,
    "F_PARAM": 30,
}
"""Where each field of an instruction lies in its WIDTH int64s (the C file gets them as -D)."""

OPS = [
    "FILL",
    "COPY",
    "NEG",
    "EXP",
    "LOG",
    "SQRT",
    "RSQRT",
    "SIN",
    "COS",
    "TAN",
    "TANH",
    "SIGMOID",
    "ABS",
    "SIGN",
    "RECIPROCAL",
    "LOG1P",
    "EXPM1",
    "ATAN",
    "SINH",
    "COSH",
    "POW_SCALAR",
    "ADD",
    "SUB",
    "MUL",
    "DIV",
    "ADD_SCALED",
    "POW",
    "MAXIMUM",
    "MINIMUM",
    "GT",
    "LT",
    "GE",
    "LE",
    "EQ",
    "NE",
    "TANH_BACKWARD",
    "SIGMOID_BACKWARD",
    "WHERE",
    "SUM",
]
OP = {name: code for code, name in enumerate(OPS)}

MAX_WORKSPACE = 1 << 22
"""Most elements of one tape's buffers; a larger graph is left to torch."""
MAX_ROWS_ELEMENTS = 1 << 12
"""Most elements of the runs' rows for which the machine steps: beyond that, torch's vectorised
(and compiled) kernels cost less than the machine's plain loops (measured on Himmelblau, one
thread, 1,000 Adam steps: the machine 6.7x faster at 128 elements, 2.3x at 1,024, about even at
4,096, 2.4x slower at 16,384)."""


def _definitions() -> list[str]:
    defs = [f"-DWIDTH={WIDTH}", *(f"-D{name}={value}" for name, value in FIELDS.items())]
    defs += [f"-DOP_{name}={code}" for name, code in OP.items()]
    return defs


def _fingerprint() -> str:
    digest = hashlib.sha256(" ".join(_definitions()).encode())
    for source in SOURCES:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def library_name() -> str:
    return f"_machine_{_fingerprint()}.so"


def compiler() -> str | None:
    """The C compiler: $CC, else cc, gcc or clang."""
    names = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    return next((path for name in names if (path := shutil.which(name))), None)


def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gradient-service"


def build(folder: Path) -> Path:
    """Compile the machine into ``folder`` (atomically: a half-written library is never loaded)."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / library_name()
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        partial = Path(scratch) / target.name
        # No fast-math and no contraction into fused multiply-adds: IEEE arithmetic, as torch's.
        command = [cc, "-O2", "-std=c11", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math"]
        command += [*_definitions(), "-o", str(partial), str(SOURCES[0]), "-lm"]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        os.replace(partial, target)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The machine, loaded once: prebuilt beside this file, else from (or built into) the cache
    folder; None when it cannot be built (no compiler): the torch steps are used instead. (Two
    threads loading it at once may both build it: each build replaces the file whole.)"""
    return _load()


def _load() -> ctypes.CDLL | None:
    for folder in (HERE, cache_folder()):  # never a folder others may write to: the library is loaded as code
        path = folder / library_name()
        if not path.exists():
            if compiler() is None:
                continue
            try:
                path = build(folder)
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                logger.debug("building the step machine in %s failed: %s", folder, exc)
                continue
        try:
            return _declare(ctypes.CDLL(str(path)))
        except OSError as exc:
            logger.warning("loading the step machine from %s failed: %s", path, exc)
    logger.info("the step machine is unavailable (no C compiler); optimisation steps use torch alone")
    return None


class Context(ctypes.Structure):
    """machine.c's context (the same layout for both element types)."""

    _fields_ = [
        ("tape", ctypes.c_void_p),
        ("count", ctypes.c_int64),
        ("bufs", ctypes.c_void_p),
        ("params", ctypes.c_void_p),
        ("n", ctypes.c_int64),
        ("d", ctypes.c_int64),
        ("values", ctypes.c_void_p),
        ("grads", ctypes.c_void_p),
        ("active", ctypes.c_void_p),
        ("tolerance", ctypes.c_double),
    ]


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    for suffix in ("f32", "f64"):
        evaluate = getattr(lib, f"evaluate_{suffix}")
        evaluate.restype = ctypes.c_int64
        evaluate.argtypes = [ctypes.POINTER(Context)]
    return lib


# --- from a traced graph to a tape -------------------------------------------------------------


class Unsupported(Exception):
    """The graph holds something the tape cannot express."""


@dataclass(frozen=True)
class View:
    """A value of the graph: ``shape`` elements of buffer ``buf`` (0: the rows, 1: the
    workspace) from ``offset``, ``strides`` apart (0 along a broadcast dimension)."""

    buf: int
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    def contiguous(self) -> bool:
        return self.strides == _contiguous(self.shape)


def _contiguous(shape: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


@dataclass
class Tape:
    """A graph as instructions; ``constants`` are (offset, values) written once into the
    workspace of ``workspace`` elements; ``values`` and ``grads`` are where the results lie."""

    instructions: list[list[int]] = field(default_factory=list)
    params: list[float] = field(default_factory=lambda: [0.0])
    workspace: int = 0
    constants: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    values: View | None = None
    grads: View | None = None

    def allocate(self, shape: Sequence[int]) -> View:
        size = 1
        for dim in shape:
            size *= dim
        view = View(1, self.workspace, tuple(shape), _contiguous(shape))
        self.workspace += max(size, 1)
        if self.workspace > MAX_WORKSPACE:
            raise Unsupported("too large")
        return view

    def param(self, value: float) -> int:
        self.params.append(float(value))
        return len(self.params) - 1

    def emit(
        self, op: str, out: View, *inputs: View, param: float = 0.0, kept: int = 0, shape: Sequence[int] = ()
    ) -> None:
        """One instruction over ``shape`` (default: ``out``'s), each input already broadcast to it."""
        shape = tuple(shape or out.shape)
        if len(shape) > MAXDIM:
            raise Unsupported("more than 4 dimensions")
        pad = MAXDIM - len(shape)
        row = [0] * WIDTH
        row[FIELDS["F_OP"]] = OP[op]
        row[FIELDS["F_KEPT"]] = kept + pad
        row[FIELDS["F_SHAPE"] : FIELDS["F_SHAPE"] + MAXDIM] = [1] * pad + list(shape)
        out_strides = out.strides if op != "SUM" else out.strides[:kept] + (0,) * (len(shape) - kept)
        row[FIELDS["F_OUT"]], row[FIELDS["F_OUT_OFFSET"]] = out.buf, out.offset
        row[FIELDS["F_OUT_STRIDES"] : FIELDS["F_OUT_STRIDES"] + MAXDIM] = [0] * pad + list(out_strides)
        for slot, name in enumerate("ABC"):
            base = FIELDS[f"F_{name}"]
            if slot < len(inputs):
                view = inputs[slot]
                row[base], row[base + 1] = view.buf, view.offset
                row[base + 2 : base + 2 + MAXDIM] = [0] * pad + list(view.strides)
            else:
                row[base] = -1
        row[FIELDS["F_PARAM"]] = self.param(param) if param else 0
        self.instructions.append(row)


def _broadcast(view: View, shape: tuple[int, ...]) -> View:
    """``view`` as seen by an elementwise operation of result ``shape``."""
    if len(view.shape) > len(shape):
        raise Unsupported("broadcast to fewer dimensions")
    pad = len(shape) - len(view.shape)
    strides = []
    for size, (own, stride) in zip(
        shape, [(1, 0)] * pad + list(zip(view.shape, view.strides, strict=True)), strict=True
    ):
        if own == size:
            strides.append(stride if size != 1 else 0)
        elif own == 1:
            strides.append(0)
        else:
            raise Unsupported("shapes do not broadcast")
    return View(view.buf, view.offset, shape, tuple(strides))


aten = torch.ops.aten

_UNARY = {
    "neg": "NEG",
    "exp": "EXP",
    "log": "LOG",
    "sqrt": "SQRT",
    "rsqrt": "RSQRT",
    "sin": "SIN",
    "cos": "COS",
    "tan": "TAN",
    "tanh": "TANH",
    "sigmoid": "SIGMOID",
    "abs": "ABS",
    "sign": "SIGN",
    "sgn": "SIGN",
    "reciprocal": "RECIPROCAL",
    "log1p": "LOG1P",
    "expm1": "EXPM1",
    "atan": "ATAN",
    "sinh": "SINH",
    "cosh": "COSH",
}
_BINARY = {
    "add": "ADD",
    "sub": "SUB",
    "mul": "MUL",
    "div": "DIV",
    "pow": "POW",
    "maximum": "MAXIMUM",
    "minimum": "MINIMUM",
    "gt": "GT",
    "lt": "LT",
    "ge": "GE",
    "le": "LE",
    "eq": "EQ",
    "ne": "NE",
    "tanh_backward": "TANH_BACKWARD",
    "sigmoid_backward": "SIGMOID_BACKWARD",
}
_ALIASES = ("clone", "contiguous", "alias", "detach", "lift_fresh_copy")


def _name(target: Any) -> str:
    """``aten.add.Tensor`` and ``torch.add`` both as ``add.Tensor`` / ``add``."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target._opname}.{target._overloadname}"
    return getattr(target, "__name__", "")


class _Converter:
    def __init__(self, graph_module: torch.fx.GraphModule, rows: torch.Tensor) -> None:
        self.module, self.rows, self.dtype = graph_module, rows, rows.dtype
        self.tape = Tape()
        self.values: dict[torch.fx.Node, View] = {}

    def convert(self) -> Tape:
        for node in self.module.graph.nodes:
            if node.op == "placeholder":
                self.values[node] = View(0, 0, tuple(self.rows.shape), _contiguous(self.rows.shape))
            elif node.op == "get_attr":
                self.values[node] = self._constant(_fetch(self.module, str(node.target)))
            elif node.op == "call_function":
                self._check_dtype(node)
                self.values[node] = self._call(node)
            elif node.op == "output":
                values, grads = node.args[0]
                self.tape.values = self._owned(self._operand(values))
                self.tape.grads = self._owned(self._operand(grads))
            else:
                raise Unsupported(node.op)
        return self.tape

    def _check_dtype(self, node: torch.fx.Node) -> None:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dtype not in (self.dtype, torch.bool):
            raise Unsupported(f"dtype {val.dtype}")

    def _constant(self, value: Any) -> View:
        if not isinstance(value, torch.Tensor) or value.dtype not in (self.dtype, torch.bool) or value.dim() > MAXDIM:
            raise Unsupported("constant")
        view = self.tape.allocate(tuple(value.shape))
        self.tape.constants.append((view.offset, value.detach().to(self.dtype).reshape(-1).cpu()))
        return view

    def _number(self, value: float) -> View:
        return self._constant(torch.tensor(float(value), dtype=self.dtype))

    def _operand(self, arg: Any) -> View:
        if isinstance(arg, torch.fx.Node):
            return self.values[arg]
        if isinstance(arg, (bool, int, float)):
            return self._number(arg)
        raise Unsupported(f"operand {type(arg).__name__}")

    def _owned(self, view: View) -> View:
        """``view`` in a contiguous buffer of the workspace (a copy if it is not one already)."""
        if view.buf == 1 and view.contiguous():
            return view
        out = self.tape.allocate(view.shape)
        self.tape.emit("COPY", out, view)
        return out

    def _shape(self, node: torch.fx.Node) -> tuple[int, ...]:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise Unsupported("no shape")
        return tuple(int(size) for size in val.shape)

    def _elementwise(self, op: str, node: torch.fx.Node, args: Sequence[Any], param: float = 0.0) -> View:
        shape = self._shape(node)
        out = self.tape.allocate(shape)
        self.tape.emit(op, out, *(_broadcast(self._operand(arg), shape) for arg in args), param=param)
        return out

    def _call(self, node: torch.fx.Node) -> View:
        name = _name(node.target)
        base, _, _overload = name.partition(".")
        args, kwargs = node.args, dict(node.kwargs)
        if base in _ALIASES or (name == "_to_copy.default" and kwargs.get("dtype") in (None, self.dtype)):
            kwargs.pop("memory_format", None)
            return self._operand(args[0])
        for key in ("memory_format", "pin_memory", "layout", "device", "dtype"):
            if key in kwargs and (key != "dtype" or kwargs[key] in (None, self.dtype)):
                del kwargs[key]  # what the result's own shape, dtype and device already say
        if kwargs and not (base in ("add", "sub", "rsub") and set(kwargs) == {"alpha"}):
            raise Unsupported(f"{name} with {sorted(kwargs)}")
        if base == "rsub" and len(args) == 2 and "alpha" not in kwargs:
            return self._elementwise("SUB", node, args[::-1])
        if base in _UNARY and len(args) == 1:
            return self._elementwise(_UNARY[base], node, args)
        if base == "pow" and isinstance(args[1], (int, float)) and not isinstance(args[1], bool):
            return self._elementwise("POW_SCALAR", node, args[:1], param=float(args[1]))
        if base in ("add", "sub") and "alpha" in kwargs:
            alpha = float(kwargs["alpha"]) * (1 if base == "add" else -1)  # type: ignore[arg-type]
            return self._elementwise("ADD_SCALED", node, args, param=alpha)
        if base in _BINARY and len(args) == 2:
            if base == "pow" and isinstance(args[0], (int, float)):
                raise Unsupported("number ** tensor")
            return self._elementwise(_BINARY[base], node, args)
        if base == "where" and len(args) == 3:
            return self._elementwise("WHERE", node, args)
        if base in ("ones_like", "zeros_like", "full_like", "new_zeros", "new_ones", "scalar_tensor"):
            return self._fill(node, base, args)
        handler = _VIEWS.get(base)
        if handler is not None:
            return handler(self, node, args)
        if base in ("sum", "mean"):
            return self._reduce(node, base, args)
        if base in ("stack", "cat"):
            return self._join(node, base, args)
        if base in ("select_backward", "slice_backward"):
            return self._scatter(node, base, args)
        raise Unsupported(name)

    def _fill(self, node: torch.fx.Node, base: str, args: Sequence[Any]) -> View:
        value = {"ones_like": 1.0, "new_ones": 1.0, "zeros_like": 0.0, "new_zeros": 0.0}.get(base)
        if value is None:
            value = float(args[1] if base == "full_like" else args[0])
        out = self.tape.allocate(self._shape(node))
        self._fill_view(out, value)
        return out

    def _fill_view(self, out: View, value: float) -> None:
        self.tape.emit("FILL", out, param=value)  # at every evaluation: simple, and cheap at these sizes

    def _reduce(self, node: torch.fx.Node, base: str, args: Sequence[Any]) -> View:
        source = self._operand(args[0])
        dims = list(range(len(source.shape))) if len(args) < 2 or args[1] is None else list(args[1])
        dims = sorted(dim % max(len(source.shape), 1) for dim in dims)
        kept = [dim for dim in range(len(source.shape)) if dim not in dims]
        order = kept + dims
        arranged = View(
            source.buf,
            source.offset,
            tuple(source.shape[dim] for dim in order),
            tuple(source.strides[dim] for dim in order),
        )
        shape = self._shape(node)
        out = self.tape.allocate(tuple(source.shape[dim] for dim in kept))
        self.tape.emit("SUM", out, arranged, kept=len(kept), shape=arranged.shape)
        if base == "mean":
            count = 1
            for dim in dims:
                count *= source.shape[dim]
            divided = self.tape.allocate(out.shape)
            self.tape.emit("DIV", divided, out, _broadcast(self._number(count), out.shape))
            out = divided
        return View(out.buf, out.offset, shape, _contiguous(shape))  # keepdim only adds ones

    def _join(self, node: torch.fx.Node, base: str, args: Sequence[Any]) -> View:
        parts = [self._operand(arg) for arg in args[0]]
        shape = self._shape(node)
        dim = int(args[1]) if len(args) > 1 else 0
        dim %= len(shape)
        out = self.tape.allocate(shape)
        start = 0
        for part in parts:
            if base == "stack":
                target = _select(out, dim, start)
                start += 1
            else:
                target = _slice(out, dim, start, start + part.shape[dim], 1)
                start += part.shape[dim]
            self.tape.emit("COPY", target, _broadcast(part, target.shape))
        return out

    def _scatter(self, node: torch.fx.Node, base: str, args: Sequence[Any]) -> View:
        grad = self._operand(args[0])
        shape = self._shape(node)
        out = self.tape.allocate(shape)
        self._fill_view(out, 0.0)
        dim = int(args[2]) % len(shape)
        if base == "select_backward":
            target = _select(out, dim, int(args[3]))
        else:
            start, end, step = (int(value) for value in args[3:6])
            target = _slice(out, dim, start, end, step)
        self.tape.emit("COPY", target, _broadcast(grad, target.shape))
        return out


def _fetch(module: torch.fx.GraphModule, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _select(view: View, dim: int, index: int) -> View:
    dim %= len(view.shape)
    index %= view.shape[dim]
    return View(
        view.buf,
        view.offset + index * view.strides[dim],
        view.shape[:dim] + view.shape[dim + 1 :],
        view.strides[:dim] + view.strides[dim + 1 :],
    )


def _slice(view: View, dim: int, start: int | None, end: int | None, step: int) -> View:
    dim %= len(view.shape)
    begin, stop, _ = slice(start, end, step).indices(view.shape[dim])
    size = max(0, -(-(stop - begin) // step))
    shape = (*view.shape[:dim], size, *view.shape[dim + 1 :])
    strides = (*view.strides[:dim], view.strides[dim] * step, *view.strides[dim + 1 :])
    return View(view.buf, view.offset + begin * view.strides[dim], shape, strides)


def _reshaped(converter: _Converter, node: torch.fx.Node, args: Sequence[Any]) -> View:
    source = converter._operand(args[0])
    if not source.contiguous():
        source = converter._owned(source)
    shape = converter._shape(node)
    return View(source.buf, source.offset, shape, _contiguous(shape))


def _expanded(converter: _Converter, node: torch.fx.Node, args: Sequence[Any]) -> View:
    return _broadcast(converter._operand(args[0]), converter._shape(node))


def _permuted(converter: _Converter, node: torch.fx.Node, args: Sequence[Any]) -> View:
    source = converter._operand(args[0])
    name = _name(node.target).partition(".")[0]
    if name == "permute":
        order = [int(dim) % len(source.shape) for dim in args[1]]
    else:  # t, transpose
        order = list(range(len(source.shape)))
        first, second = (0, 1) if name == "t" else (int(args[1]), int(args[2]))
        first, second = first % len(order), second % len(order)
        order[first], order[second] = order[second], order[first]
    return View(
        source.buf,
        source.offset,
        tuple(source.shape[dim] for dim in order),
        tuple(source.strides[dim] for dim in order),
    )


def _unsqueezed(converter: _Converter, node: torch.fx.Node, args: Sequence[Any]) -> View:
    source = converter._operand(args[0])
    shape = converter._shape(node)
    if _name(node.target).startswith("unsqueeze"):
        dim = int(args[1]) % (len(source.shape) + 1)
        return View(source.buf, source.offset, shape, (*source.strides[:dim], 0, *source.strides[dim:]))
    strides, kept = [], 0  # a squeeze drops dimensions of size 1 only
    for size, stride in zip(source.shape, source.strides, strict=True):
        if kept < len(shape) and shape[kept] == size:
            strides.append(stride)
            kept += 1
        elif size != 1:
            raise Unsupported("squeeze")
    return View(source.buf, source.offset, shape, tuple(strides))


_VIEWS: dict[str, Callable[[_Converter, torch.fx.Node, Sequence[Any]], View]] = {
    "select": lambda c, node, args: _select(c._operand(args[0]), int(args[1]), int(args[2])),
    "slice": lambda c, node, args: _slice(
        c._operand(args[0]),
        int(args[1]) if len(args) > 1 else 0,
        args[2] if len(args) > 2 else None,
        args[3] if len(args) > 3 else None,
        int(args[4]) if len(args) > 4 else 1,
    ),
    "view": _reshaped,
    "_unsafe_view": _reshaped,
    "reshape": _reshaped,
    "expand": _expanded,
    "permute": _permuted,
    "t": _permuted,
    "transpose": _permuted,
    "unsqueeze": _unsqueezed,
    "squeeze": _unsqueezed,
}


@dataclass(frozen=True)
class Program:
    """A traced graph as the machine's tape, for rows of one shape and dtype."""

    tape: np.ndarray
    params: np.ndarray
    workspace: int
    constants: list[tuple[int, torch.Tensor]]
    values: View
    grads: View
    dtype: torch.dtype


def program(graph_module: torch.fx.GraphModule, rows: torch.Tensor) -> Program | None:
    """The graph as a tape for ``rows`` ([N, D], float32 or float64, on the CPU), or None where
    the tape cannot express it."""
    if rows.device.type != "cpu" or rows.dtype not in (torch.float32, torch.float64) or rows.dim() != 2:
        return None
    try:
        tape = _Converter(graph_module, rows).convert()
    except (Unsupported, ValueError, TypeError, IndexError, KeyError, ZeroDivisionError) as exc:
        logger.debug("the step machine cannot run this graph: %s", exc)
        return None
    assert tape.values is not None and tape.grads is not None
    if tape.values.shape != (rows.shape[0],) or tape.grads.shape != tuple(rows.shape):
        return None
    return Program(
        np.array(tape.instructions, dtype=np.int64).reshape(-1, WIDTH),
        np.array(tape.params, dtype=np.float64),
        tape.workspace,
        tape.constants,
        tape.values,
        tape.grads,
        rows.dtype,
    )


class Machine:
    """One group of runs on the machine: ``rows`` (read in place), the workspace holding the
    tape's buffers, and ``values`` and ``grads``, views of it written by each evaluation."""

    def __init__(self, lib: ctypes.CDLL, program: Program, rows: torch.Tensor) -> None:
        assert rows.is_contiguous() and rows.dtype == program.dtype and rows.dim() == 2
        self._evaluate = getattr(lib, "evaluate_f64" if program.dtype == torch.float64 else "evaluate_f32")
        self.program, self.rows = program, rows
        self.workspace = torch.zeros(max(program.workspace, 1), dtype=program.dtype)
        for offset, values in program.constants:
            self.workspace[offset : offset + values.numel()] = values
        self.buffers = (ctypes.c_void_p * 2)(rows.data_ptr(), self.workspace.data_ptr())
        self.values = self._view(program.values)
        self.grads = self._view(program.grads)
        self.context = Context(
            program.tape.ctypes.data,
            len(program.tape),
            ctypes.addressof(self.buffers),
            program.params.ctypes.data,
            rows.shape[0],
            rows.shape[1],
            self.values.data_ptr(),
            self.grads.data_ptr(),
            None,
            -1.0,
        )
        self.pointer = ctypes.byref(self.context)

    def _view(self, view: View) -> torch.Tensor:
        size = 1
        for dim in view.shape:
            size *= dim
        return self.workspace[view.offset : view.offset + size].view(view.shape)

    def watch(self, active: torch.Tensor | None, tolerance: float | None) -> None:
        """What the following evaluations look at: the rows in ``active`` (a uint8 tensor that
        must outlive them; None: every row), and gradient norms within ``tolerance``."""
        self.context.active = None if active is None else active.data_ptr()
        self.context.tolerance = -1.0 if tolerance is None else float(tolerance)

    def evaluate(self) -> int:
        """Values and gradients at the rows, into ``values`` and ``grads``. Returns 0 unless a
        watched row's value or gradient is not finite (bit 1) or its gradient's norm is within
        the tolerance, give or take a millionth (bit 2: the caller checks exactly)."""
        return int(self._evaluate(self.pointer))


def main() -> None:
    """Build the machine beside this file (ahead of time: scripts/setup, the container image)."""
    path = HERE / library_name()
    print(f"{path} is built" if path.exists() else f"built {build(HERE)}")


if __name__ == "__main__":
    main()
