"""A small Python-like expression language: parsed by ``ast``, checked against an allow-list,
compiled to a torch callable. Nothing is ever executed as Python.

    program     := (name "=" expr NEWLINE)* expr
    expr        := number | name | expr op expr | "-" expr | "+" expr | expr cmp expr
                 | expr "[" index "]" | expr ".T" | function "(" args ")"
    op          := + - * / ** @        cmp := < <= > >= == !=
    index       := ints, slices of ints, "..." and ":" (static: literals only)

Numbers become tensors of the request's dtype, so ``9**9**9`` is a float overflow (inf), not a
Python big-integer computation. Static arguments (dims, shapes, options) must be literals.
Every refusal is an InvalidInput (400) naming what was refused and its line and column.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from service.compute.ops.functions import FUNCTIONS, REQUIRED, Arg, Function
from service.errors import InvalidInput, LimitExceeded

Env = dict[str, torch.Tensor]
Node = Callable[[Env], torch.Tensor]

BINARY_OPS: dict[type[ast.operator], Callable[[Any, Any], torch.Tensor]] = {
    ast.Add: torch.add,
    ast.Sub: torch.sub,
    ast.Mult: torch.mul,
    ast.Div: torch.div,
    ast.Pow: torch.pow,
    ast.MatMult: torch.matmul,
}
COMPARISONS: dict[type[ast.cmpop], Callable[[Any, Any], torch.Tensor]] = {
    ast.Lt: torch.lt,
    ast.LtE: torch.le,
    ast.Gt: torch.gt,
    ast.GtE: torch.ge,
    ast.Eq: torch.eq,
    ast.NotEq: torch.ne,
}
OPERATOR_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.MatMult: "@"}
COMPARISON_SYMBOLS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
OPERATORS: tuple[str, ...] = (
    *(OPERATOR_SYMBOLS[op] for op in BINARY_OPS),
    "unary -",
    "unary +",
    *(COMPARISON_SYMBOLS[op] for op in COMPARISONS),
    "x[i, a:b]",
    ".T",
    "name = expr",
)
"""The language's operators and syntax, as GET /v1/functions lists them."""


@dataclass(frozen=True)
class Limits:
    max_length: int = 10_000
    max_nodes: int = 2_000
    max_depth: int = 64


@dataclass
class SizeBudget:
    """The largest tensor one evaluation may make, and the largest it did make."""

    limit: int
    peak: int = 0

    def check(self, elements: int, node: ast.AST) -> None:
        if elements > self.limit:
            raise LimitExceeded(
                f"This step would make a tensor of {elements} elements, over the limit of {self.limit}"
                f" (line {getattr(node, 'lineno', '?')}, column {getattr(node, 'col_offset', -1) + 1}).",
                error_type="intermediate_too_large",
                limit=self.limit,
            )
        self.peak = max(self.peak, elements)


@dataclass(frozen=True)
class Program:
    """A checked, compiled expression: ``program(inputs)`` evaluates it with torch."""

    source: str
    steps: tuple[tuple[str, Node], ...]
    result: Node
    names: frozenset[str]
    """The input names the program reads."""
    budget: SizeBudget
    """Every intermediate tensor is checked against it; ``budget.peak`` is the largest seen."""

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        env: Env = dict(inputs)
        for name, step in self.steps:
            env[name] = step(env)
        return self.result(env)


def refused(message: str, node: ast.AST | None = None, error_type: str = "invalid_expression") -> InvalidInput:
    where: dict[str, int] = {}
    line, column = getattr(node, "lineno", None), getattr(node, "col_offset", None)
    if line is not None and column is not None:
        where = {"line": line, "column": column + 1}
        message = f"{message} (line {line}, column {column + 1})"
    return InvalidInput(message, error_type=error_type, **where)


def parse(source: str, limits: Limits) -> ast.Module:
    """``source`` as a checked syntax tree, within the length, node and depth limits."""
    if len(source) > limits.max_length:
        raise LimitExceeded(
            f"The expression is {len(source)} characters long, over the limit of {limits.max_length}.",
            error_type="expression_too_long",
            limit=limits.max_length,
        )
    try:
        tree = ast.parse(source, mode="exec")
    except SyntaxError as exc:
        if "too many nested" in str(exc.msg) or "too complex" in str(exc.msg):
            raise LimitExceeded(
                f"The expression is nested too deeply: {exc.msg}.",
                error_type="expression_too_deep",
                limit=limits.max_depth,
            ) from None
        raise InvalidInput(
            f"The expression is not valid syntax: {exc.msg} (line {exc.lineno}, column {exc.offset}).",
            error_type="invalid_expression",
            line=exc.lineno,
            column=exc.offset,
        ) from None
    except (RecursionError, MemoryError):
        raise LimitExceeded(
            "The expression is nested too deeply to parse.", error_type="expression_too_deep", limit=limits.max_depth
        ) from None
    _check_size(tree, limits)
    return tree


def _check_size(tree: ast.AST, limits: Limits) -> None:
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:  # iterative, so a deep tree cannot exhaust the interpreter's stack here
        node, depth = stack.pop()
        count += 1
        if count > limits.max_nodes:
            raise LimitExceeded(
                f"The expression has more than {limits.max_nodes} syntax nodes.",
                error_type="expression_too_large",
                limit=limits.max_nodes,
            )
        if depth > limits.max_depth:
            raise LimitExceeded(
                f"The expression is nested more than {limits.max_depth} levels deep.",
                error_type="expression_too_deep",
                limit=limits.max_depth,
            )
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def compile_program(
    source: str,
    inputs: frozenset[str],
    dtype: torch.dtype,
    device: torch.device,
    limits: Limits,
    max_elements: int = 10_000_000,
) -> Program:
    """Parse, check and compile ``source``; ``inputs`` are the names the request provides, and
    no intermediate tensor may hold more than ``max_elements`` elements."""
    tree = parse(source, limits)
    if not tree.body:
        raise refused("The expression is empty.")
    compiler = _Compiler(set(inputs), dtype, device, SizeBudget(max_elements))
    steps: list[tuple[str, Node]] = []
    for statement in tree.body[:-1]:
        if not isinstance(statement, ast.Assign) or len(statement.targets) != 1:
            raise refused("Only 'name = expression' lines may come before the final expression.", statement)
        target = statement.targets[0]
        if not isinstance(target, ast.Name):
            raise refused("Only a plain name can be assigned to.", target)
        if target.id in compiler.defined or target.id in FUNCTIONS:
            raise refused(f"'{target.id}' is already defined; choose another name.", target)
        steps.append((target.id, compiler.expression(statement.value)))
        compiler.defined.add(target.id)
    final = tree.body[-1]
    if not isinstance(final, ast.Expr):
        raise refused("The last line must be an expression (the value to differentiate).", final)
    result = compiler.expression(final.value)
    return Program(source, tuple(steps), result, frozenset(compiler.read & inputs), compiler.budget)


class _Compiler:
    """Turns allowed syntax nodes into closures over torch; refuses everything else."""

    HANDLERS: ClassVar[dict[type[ast.expr], str]] = {
        ast.Constant: "constant",
        ast.Name: "name",
        ast.BinOp: "binary",
        ast.UnaryOp: "unary",
        ast.Compare: "compare",
        ast.Attribute: "attribute",
        ast.Subscript: "subscript",
        ast.Call: "call",
    }
    """The allow-list: every other kind of syntax is refused."""

    def __init__(self, defined: set[str], dtype: torch.dtype, device: torch.device, budget: SizeBudget) -> None:
        self.defined = defined
        self.read: set[str] = set()
        self.dtype = dtype
        self.device = device
        self.budget = budget

    def checked(self, node: ast.AST, op: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        """``op(*args)``, refused before it runs if broadcasting its tensors would make one over
        budget, and counted after (for ops whose output size their inputs do not bound)."""
        shapes = [arg.shape for arg in args if isinstance(arg, torch.Tensor)]
        if len(shapes) > 1:
            self.budget.check(_output_elements(op, shapes), node)
        result = op(*args)
        self.budget.check(result.numel(), node)
        return result

    def expression(self, node: ast.expr) -> Node:
        handler = self.HANDLERS.get(type(node))
        if handler is None:
            raise refused(f"{_describe(node)} is not allowed in an expression", node)
        compiled: Node = getattr(self, handler)(node)
        return compiled

    def constant(self, node: ast.Constant) -> Node:
        if type(node.value) not in (int, float):
            raise refused(f"{_describe(node)} is not allowed here; only numbers are", node)
        number: int | float = node.value  # type: ignore[assignment]
        value = torch.tensor(_as_float(number, node), dtype=self.dtype, device=self.device)
        return lambda env: value

    def name(self, node: ast.Name) -> Node:
        name = node.id
        if name not in self.defined:
            hint = " (it is a function: call it)" if name in FUNCTIONS else ""
            raise refused(f"Unknown name '{name}'{hint}", node, "unknown_name")
        self.read.add(name)
        return lambda env: env[name]

    def binary(self, node: ast.BinOp) -> Node:
        op = BINARY_OPS.get(type(node.op))
        if op is None:
            raise refused(f"The operator {type(node.op).__name__} is not allowed", node)
        left = self.expression(node.left)
        if isinstance(node.op, ast.Pow) and isinstance(node.right, ast.Constant):
            # A number exponent stays a number, as in torch code: ``x ** 2`` then runs as x * x,
            # and its derivative as 2 * x, rather than through pow with a tensor exponent.
            tensor_exponent = self.constant(node.right)  # refuses what is not a number
            exponent = _as_float(node.right.value, node.right)  # type: ignore[arg-type]

            def power(env: Env) -> torch.Tensor:
                base = left(env)  # a boolean or integer base keeps the tensor exponent's promotion
                return self.checked(node, op, base, exponent if base.dtype == self.dtype else tensor_exponent(env))

            return power
        right = self.expression(node.right)
        return lambda env: self.checked(node, op, left(env), right(env))

    def unary(self, node: ast.UnaryOp) -> Node:
        operand = self.expression(node.operand)
        if isinstance(node.op, ast.USub):
            return lambda env: torch.neg(operand(env))
        if isinstance(node.op, ast.UAdd):
            return operand
        raise refused(f"The operator {type(node.op).__name__} is not allowed", node)

    def compare(self, node: ast.Compare) -> Node:
        if len(node.ops) != 1:
            raise refused("Chained comparisons are not allowed; compare two values at a time", node)
        op = COMPARISONS.get(type(node.ops[0]))
        if op is None:
            raise refused(f"The comparison {type(node.ops[0]).__name__} is not allowed", node)
        left, right = self.expression(node.left), self.expression(node.comparators[0])
        return lambda env: self.checked(node, op, left(env), right(env))

    def attribute(self, node: ast.Attribute) -> Node:
        if node.attr != "T":
            raise refused(f"The attribute '.{node.attr}' is not allowed; only '.T' is", node)
        value = self.expression(node.value)

        def transpose(env: Env) -> torch.Tensor:
            tensor = value(env)
            return tensor.permute(tuple(reversed(range(tensor.dim()))))

        return transpose

    def subscript(self, node: ast.Subscript) -> Node:
        value = self.expression(node.value)
        index = _static_index(node.slice)
        return lambda env: value(env)[index]

    def call(self, node: ast.Call) -> Node:
        if not isinstance(node.func, ast.Name):
            raise refused("Only functions named directly can be called, such as exp(x)", node)
        function = FUNCTIONS.get(node.func.id)
        if function is None:
            raise refused(f"Unknown function '{node.func.id}'; GET /v1/functions lists them", node, "unknown_function")
        bound = _bind(function, node)
        tensors = {name: self.expression(arg) for name, arg in bound.items() if isinstance(arg, ast.expr)}
        statics = {name: value for name, value in bound.items() if not isinstance(value, ast.expr)}
        order = [arg.name for arg in function.args] + [name for name in bound if name.startswith("*")]

        def call(env: Env) -> torch.Tensor:
            values = [tensors[name](env) if name in tensors else statics[name] for name in order]
            return self.checked(node, function.call, *values)

        return call


def _bind(function: Function, node: ast.Call) -> dict[str, Any]:
    """Match a call's arguments to the function's: tensors stay syntax, options become values."""
    bound: dict[str, Any] = {}
    extra: list[ast.expr] = []
    for position, given in enumerate(node.args):
        if isinstance(given, ast.Starred):
            raise refused("Star-arguments are not allowed", given)
        if position < len(function.args):
            bound[function.args[position].name] = given
        elif function.variadic is not None:
            extra.append(given)
        else:
            raise refused(f"{function.name} takes at most {len(function.args)} arguments: {function.signature()}", node)
    by_name = {arg.name: arg for arg in function.args}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise refused("**-arguments are not allowed", keyword.value)
        if keyword.arg not in by_name:
            raise refused(f"{function.name} has no argument '{keyword.arg}': {function.signature()}", keyword.value)
        if keyword.arg in bound:
            raise refused(f"{function.name} got '{keyword.arg}' twice", keyword.value)
        bound[keyword.arg] = keyword.value
    result: dict[str, Any] = {}
    for arg in function.args:
        if arg.name not in bound:
            if arg.default is REQUIRED:
                raise refused(f"{function.name} needs '{arg.name}': {function.signature()}", node)
            result[arg.name] = arg.default
        else:
            result[arg.name] = _argument(arg, bound[arg.name], function)
    for position, value in enumerate(extra):
        assert function.variadic is not None
        result[f"*{position}"] = _argument(function.variadic, value, function)
    return result


def _argument(arg: Arg, node: ast.expr, function: Function) -> Any:
    if arg.kind in ("tensor", "optional_tensor"):
        if arg.kind == "optional_tensor" and isinstance(node, ast.Constant) and node.value is None:
            return None
        return node
    value = _literal(node)
    optional = arg.kind.startswith("optional_")
    kind = arg.kind.removeprefix("optional_")
    if value is None and optional:
        return None
    ok = {
        "int": type(value) is int and -(2**63) <= value < 2**63,
        "float": type(value) in (int, float),
        "bool": type(value) is bool,
        "str": type(value) is str and (arg.choices is None or value in arg.choices),
    }[kind]
    if not ok:
        expected = f"one of {list(arg.choices)}" if arg.choices else f"a literal {kind}"
        raise refused(f"{function.name}: '{arg.name}' must be {expected}", node, "invalid_argument")
    return _as_float(value, node) if kind == "float" else value


def _as_float(number: float, node: ast.AST) -> float:
    try:
        return float(number)
    except OverflowError:
        raise refused("The number is too large for a float", node) from None


def _output_elements(op: Callable[..., torch.Tensor], shapes: list[torch.Size]) -> int:
    """Elements of the result of ``op`` on tensors of ``shapes``: broadcast, or matmul's rule."""
    try:
        if op is torch.matmul and len(shapes) == 2:
            left, right = shapes
            batch = torch.broadcast_shapes(left[:-2], right[:-2])  # type: ignore[no-untyped-call]
            rows = left[-2] if len(left) >= 2 else 1
            columns = right[-1] if len(right) >= 2 else 1
            return int(batch.numel() * rows * columns)
        return int(torch.broadcast_shapes(*shapes).numel())  # type: ignore[no-untyped-call]
    except RuntimeError:
        return 0  # the shapes do not broadcast: torch itself will refuse them


def _literal(node: ast.expr) -> Any:
    """The value of a literal option (a number, possibly negated, a bool, a string or None)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _literal(node.operand)
        if type(inner) in (int, float):
            return -inner
        raise refused("Only a number can be negated here", node)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | bool | str | type(None)):
        return node.value
    raise refused(f"{_describe(node)} is not a literal; options such as dim must be written out", node)


def _static_index(node: ast.expr) -> Any:
    """An index made of literal ints, slices of them, ':' and '...'."""
    if isinstance(node, ast.Tuple):
        return tuple(_static_index(element) for element in node.elts)
    if isinstance(node, ast.Slice):
        parts = [None if part is None else _literal(part) for part in (node.lower, node.upper, node.step)]
        if not all(part is None or type(part) is int for part in parts):
            raise refused("Slice bounds must be literal integers", node)
        return slice(*parts)
    if isinstance(node, ast.Constant) and node.value is Ellipsis:
        return Ellipsis
    value = _literal(node)
    if type(value) is not int or not -(2**63) <= value < 2**63:
        raise refused("An index must be a literal integer, a slice or '...'", node)
    return value


def _describe(node: ast.AST) -> str:
    descriptions = {
        ast.Lambda: "A lambda",
        ast.ListComp: "A list comprehension",
        ast.GeneratorExp: "A generator expression",
        ast.DictComp: "A dict comprehension",
        ast.SetComp: "A set comprehension",
        ast.JoinedStr: "An f-string",
        ast.NamedExpr: "The walrus operator",
        ast.IfExp: "A conditional expression (use where)",
        ast.BoolOp: "and/or (use comparisons with where)",
        ast.Await: "await",
        ast.Yield: "yield",
        ast.Starred: "A starred expression",
        ast.List: "A list",
        ast.Tuple: "A tuple",
        ast.Dict: "A dict",
        ast.Set: "A set",
    }
    if isinstance(node, ast.Constant):
        return f"The constant {node.value!r}"[:60]
    return descriptions.get(type(node), f"The syntax '{type(node).__name__}'")
