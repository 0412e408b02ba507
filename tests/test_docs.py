"""The documentation against the code: the errors page's table against every error type the
service can send (collected from the source with ``ast``), the configuration page against
``Settings``, the README's length, and every relative link in the README and under docs/.

``scripts/test`` also builds the site with ``mkdocs build --strict``, which checks the nav and the
links between pages; these tests need no mkdocs.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from service import errors
from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "service"
DOCS = ROOT / "docs"
README = ROOT / "README.md"
ERRORS_PAGE = DOCS / "errors.md"
CONFIGURATION_PAGE = DOCS / "configuration.md"
README_MAX_LINES = 250

LITERAL_BODY_STATUSES = {"internal_error": 500}
"""Error bodies written as dict literals (``{"error": {"type": "..."}}``), whose status the source
does not say next to them. A new one fails ``test_error_bodies_written_as_literals_are_known``."""

NON_SETTING_VARIABLES = {
    "GRADIENT_CHROMIUM": "the browser tests' chromium",
    "GRADIENT_SCREENSHOT_DIR": "where the browser tests save the playground's picture",
    "GRADIENT_CLIENT_URL": "the client's command line: the service's URL",
    "GRADIENT_CLIENT_API_KEY": "the client's command line: the API key",
    "GRADIENT_PG_BIN": "the database tests' PostgreSQL server binaries",
}
"""``GRADIENT_*`` names the docs may mention that are not settings (the test tools' own)."""


# --- error types in the code ---------------------------------------------------------------------


@dataclass
class ErrorTypes:
    """What the source can send: type -> statuses, f-string patterns, and what could not be read."""

    statuses: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    fallbacks: set[str] = field(default_factory=set)
    """Types sent for a status a table does not list (``HTTP_ERROR_TYPES.get(status, "...")``)."""
    literal_bodies: set[str] = field(default_factory=set)
    unresolved: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Forwarder:
    """A function that passes its ``error_type`` parameter on to an exception (or, with a
    ``status`` parameter too, to a response)."""

    params: tuple[str, ...]
    defaults: dict[str, ast.expr]
    status: int | None  # None: taken from the call's ``status`` argument


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SERVICE.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _string(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _int(node: ast.expr | None) -> int | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    return None


def _argument(call: ast.Call, params: tuple[str, ...], name: str) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    index = params.index(name)
    return call.args[index] if index < len(call.args) else None


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _enclosing(node: ast.AST, parents: dict[ast.AST, ast.AST], kind: type[Any] | tuple[type[Any], ...]) -> Any:
    while node in parents:
        node = parents[node]
        if isinstance(node, kind):
            return node
    return None


def _exception_classes(trees: list[tuple[Path, ast.Module]]) -> dict[str, tuple[int, str]]:
    """Every ServiceError class by name: its status (service.errors' table, through its bases)
    and the error type it sends when raised without ``error_type``."""
    bases: dict[str, list[str]] = {}
    own_type: dict[str, str] = {}
    for _, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = [base.id if isinstance(base, ast.Name) else ast.unparse(base) for base in node.bases]
                for statement in node.body:
                    if (
                        isinstance(statement, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == "error_type" for t in statement.targets)
                        and _string(statement.value) is not None
                    ):
                        own_type[node.name] = statement.value.value  # type: ignore[attr-defined]
    statuses = {cls.__name__: status for cls, status in errors.STATUS_CODES.items()}

    def lineage(name: str) -> list[str]:
        chain, todo = [], [name]
        while todo:
            current = todo.pop(0)
            chain.append(current)
            todo.extend(base for base in bases.get(current, []) if base in bases)
        return chain

    classes = {}
    for name in bases:
        chain = lineage(name)
        if errors.ServiceError.__name__ not in chain:
            continue
        status = next(statuses[ancestor] for ancestor in chain if ancestor in statuses)
        default = next(own_type[ancestor] for ancestor in chain if ancestor in own_type)
        classes[name] = (status, default)
    return classes


def _forwarders(trees: list[tuple[Path, ast.Module]], classes: dict[str, tuple[int, str]]) -> dict[str, Forwarder]:
    """Functions with an ``error_type`` parameter that they pass to an exception class or to
    another such function (found to a fixpoint), and responders taking ``status`` and
    ``error_type`` (``error_response``)."""
    found: dict[str, Forwarder] = {}
    changed = True
    while changed:
        changed = False
        for _, tree in trees:
            for node in ast.walk(tree):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.name in found:
                    continue
                params = tuple(arg.arg for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs])
                if "error_type" not in params or node.name == "__init__":
                    continue
                positional = [arg.arg for arg in [*node.args.posonlyargs, *node.args.args]]
                with_defaults = positional[len(positional) - len(node.args.defaults) :]
                defaults = dict(zip(with_defaults, node.args.defaults, strict=True))
                defaults.update(
                    {a.arg: d for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True) if d}
                )
                if "status" in params:
                    found[node.name] = Forwarder(params, defaults, None)
                    changed = True
                    continue
                for call in ast.walk(node):
                    if not isinstance(call, ast.Call):
                        continue
                    passes = any(
                        k.arg == "error_type" and isinstance(k.value, ast.Name) and k.value.id == "error_type"
                        for k in call.keywords
                    ) or any(isinstance(a, ast.Name) and a.id == "error_type" for a in call.args)
                    callee = _callee(call)
                    if not passes or callee is None:
                        continue
                    if callee in classes:
                        status: int | None = classes[callee][0]
                    elif callee in found and found[callee].status is not None:
                        status = found[callee].status
                    else:
                        continue
                    found[node.name] = Forwarder(params, defaults, status)
                    changed = True
                    break
    return found


def _constructor_values(trees: list[tuple[Path, ast.Module]], cls: str, attribute: str) -> list[str] | None:
    """The constant values ``cls(...)`` is built with for the ``__init__`` parameter stored as
    ``self.<attribute>``, over every call in the service; None where one is not a constant."""
    init = None
    for _, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == cls:
                init = next((s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
    if init is None:
        return None
    params = tuple(arg.arg for arg in init.args.args[1:])
    stored = {
        statement.targets[0].attr: statement.value.id
        for statement in ast.walk(init)
        if isinstance(statement, ast.Assign)
        and isinstance(statement.targets[0], ast.Attribute)
        and isinstance(statement.value, ast.Name)
    }
    if stored.get(attribute) not in params:
        return None
    values = []
    for _, tree in trees:
        for call in ast.walk(tree):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == cls:
                value = _string(_argument(call, params, stored[attribute]))
                if value is None:
                    return None
                values.append(value)
    return values


def _resolve(
    node: ast.expr | None, trees: list[tuple[Path, ast.Module]], parents: dict[ast.AST, ast.AST]
) -> list[str] | None:
    """The error types an ``error_type`` argument can take: a constant, or an f-string of
    constants and ``self.<attribute>`` whose class is built with constants."""
    text = _string(node)
    if text is not None:
        return [text]
    if not isinstance(node, ast.JoinedStr):
        return None
    results = [""]
    for part in node.values:
        if isinstance(part, ast.Constant):
            results = [result + str(part.value) for result in results]
            continue
        value = part.value if isinstance(part, ast.FormattedValue) else None
        if not (isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.value.id == "self"):
            return None
        cls = _enclosing(node, parents, ast.ClassDef)
        options = _constructor_values(trees, cls.name, value.attr) if cls is not None else None
        if not options:
            return None
        results = [result + option for result in results for option in options]
    return results


def _status_tables(tree: ast.Module) -> dict[str, ast.Dict]:
    """Module-level ``NAME = {400: "bad_request", ...}``: candidate status -> type tables."""
    tables = {}
    for statement in tree.body:
        value = statement.value if isinstance(statement, ast.Assign | ast.AnnAssign) else None
        targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
        if (
            isinstance(value, ast.Dict)
            and value.keys
            and all(400 <= (_int(key) or 0) < 600 for key in value.keys)
            and all(_string(item) for item in value.values)
        ):
            tables.update({target.id: value for target in targets if isinstance(target, ast.Name)})
    return tables


def code_error_types() -> ErrorTypes:
    trees = list(_modules())
    classes = _exception_classes(trees)
    forwarders = _forwarders(trees, classes)
    found = ErrorTypes()
    for path, tree in trees:
        parents = _parents(tree)
        # A status table holds error types when a function reads it and answers with an error.
        error_tables: set[str] = set()
        for name, table in _status_tables(tree).items():
            for function in ast.walk(tree):
                if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef) and _reads_a_table_and_answers(
                    function, {name}, set(forwarders) | set(classes)
                ):
                    error_tables.add(name)
                    for key, value in zip(table.keys, table.values, strict=True):
                        found.statuses[_string(value) or ""].add(_int(key) or 0)
                    break
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            # {"error": {"type": "internal_error", ...}}: a body written out.
            if isinstance(node, ast.Dict) and any(_string(key) == "error" for key in node.keys):
                inner = node.values[[_string(key) for key in node.keys].index("error")]
                if isinstance(inner, ast.Dict):
                    for key, value in zip(inner.keys, inner.values, strict=True):
                        if _string(key) == "type" and _string(value) is not None:
                            found.literal_bodies.add(_string(value) or "")
            # TABLE.get(status, "fallback") on an error table.
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in error_tables
                and len(node.args) == 2
                and _string(node.args[1]) is not None
            ):
                found.fallbacks.add(_string(node.args[1]) or "")
            if not isinstance(node, ast.Call):
                continue
            callee = _callee(node)
            function = _enclosing(node, parents, (ast.FunctionDef, ast.AsyncFunctionDef))
            if callee in classes:
                status, default = classes[callee]
                argument = next((k.value for k in node.keywords if k.arg == "error_type"), None)
                if argument is None:
                    found.statuses[default].add(status)
                    continue
                if isinstance(argument, ast.Name) and function is not None and function.name in forwarders:
                    continue  # a forwarder's own parameter: resolved at its call sites
                values = _resolve(argument, trees, parents)
                if values is None:
                    found.unresolved.append(f"{where}: {ast.unparse(node)[:80]}")
                for error_type in values or []:
                    found.statuses[error_type].add(status)
            elif callee in forwarders:
                forwarder = forwarders[callee]
                argument = _argument(node, forwarder.params, "error_type") or forwarder.defaults.get("error_type")
                if isinstance(argument, ast.Name) and function is not None and function.name in forwarders:
                    continue
                code = forwarder.status
                if code is None:
                    code = _int(_argument(node, forwarder.params, "status"))
                values = _resolve(argument, trees, parents)
                if values is None or code is None:
                    if function is not None and _reads_a_table_and_answers(function, error_tables, {callee}):
                        continue  # error_response(exc.status_code, TABLE.get(...)): the table is read above
                    found.unresolved.append(f"{where}: {ast.unparse(node)[:80]}")
                    continue
                for error_type in values:
                    found.statuses[error_type].add(code)
    return found


def _reads_a_table_and_answers(function: ast.AST, tables: set[str], answers: set[str]) -> bool:
    nodes = list(ast.walk(function))
    return any(isinstance(node, ast.Name) and node.id in tables for node in nodes) and any(
        isinstance(node, ast.Call) and _callee(node) in answers for node in nodes
    )


@pytest.fixture(scope="module")
def code_types() -> ErrorTypes:
    return code_error_types()


# --- markdown ---------------------------------------------------------------------------------


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _without_code(text: str) -> str:
    """The text with fenced code blocks and inline code spans blanked out (links in them are
    examples, not links)."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def _table(page: Path, header: tuple[str, ...]) -> list[list[str]]:
    """The rows of the first table on ``page`` whose header cells are ``header``."""
    lines = page.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if tuple(_cells(line)) == header:
            rows = []
            for row in lines[index + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(_cells(row))
            return rows
    raise AssertionError(f"{page.relative_to(ROOT)} has no table with the header {' | '.join(header)}")


def _cells(line: str) -> list[str]:
    if not line.startswith("|"):
        return []
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _code(cell: str) -> str:
    match = re.fullmatch(r"`([^`]*)`", cell)
    assert match, f"expected one code span, got {cell!r}"
    return match.group(1)


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (mkdocs' default) gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"[^\w\s-]", "", text.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text).strip("-")


def _anchors(page: Path) -> set[str]:
    text = _without_code(page.read_text(encoding="utf-8"))
    return {_slug(match.group(1)) for match in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.MULTILINE)}


# --- tests -------------------------------------------------------------------------------------


def test_every_error_type_the_code_sends_is_in_the_table_with_its_status(code_types: ErrorTypes) -> None:
    assert not code_types.unresolved, "error types the test cannot read; make them constants:\n" + "\n".join(
        code_types.unresolved
    )
    sent = {name: statuses for name, statuses in code_types.statuses.items()}
    for name in code_types.literal_bodies:
        sent.setdefault(name, set()).add(LITERAL_BODY_STATUSES.get(name, 0))
    ambiguous = {name: sorted(statuses) for name, statuses in sent.items() if len(statuses) != 1}
    assert not ambiguous, f"error types sent with more than one status: {ambiguous}"
    documented = {_code(row[0]): int(row[1]) for row in _table(ERRORS_PAGE, ("type", "status", "when"))}
    expected = {name: next(iter(statuses)) for name, statuses in sent.items()}
    missing = {name: status for name, status in expected.items() if name not in documented}
    extra = sorted(set(documented) - set(expected))
    wrong = {
        name: (documented[name], status) for name, status in expected.items() if documented.get(name, status) != status
    }
    assert not missing, f"docs/errors.md lacks these error types (type: status): {missing}"
    assert not extra, f"docs/errors.md names error types the code never sends: {extra}"
    assert not wrong, f"docs/errors.md gives the wrong status (type: (documented, actual)): {wrong}"


def test_the_error_table_has_one_row_per_type_in_status_order() -> None:
    rows = _table(ERRORS_PAGE, ("type", "status", "when"))
    names = [_code(row[0]) for row in rows]
    assert len(names) == len(set(names)), "a type is listed twice"
    assert [int(row[1]) for row in rows] == sorted(int(row[1]) for row in rows)
    assert all(row[2] for row in rows), "every type says when it is sent"


def test_error_bodies_written_as_literals_are_known(code_types: ErrorTypes) -> None:
    assert code_types.literal_bodies == set(LITERAL_BODY_STATUSES)


def test_the_fallback_type_is_explained(code_types: ErrorTypes) -> None:
    text = ERRORS_PAGE.read_text(encoding="utf-8")
    for name in code_types.fallbacks:
        assert f"`{name}`" in text, f"docs/errors.md does not mention the fallback type {name}"


def test_the_collector_finds_what_it_must(code_types: ErrorTypes) -> None:
    """The collector itself: the kinds of call site it has to see, each at least once."""
    statuses = code_types.statuses
    assert statuses["validation_error"] == {422}  # error_response(422, "validation_error", ...)
    assert statuses["unsupported_media_type"] == {415}  # a class default, raised bare
    assert statuses["state_too_large"] == {413}  # through a forwarding helper
    assert statuses["invalid_expression"] == {400}  # a forwarding helper's default
    assert statuses["unknown_activation"] == {404}  # f"unknown_{self.kind}" with Registry("activation")
    assert statuses["method_not_allowed"] == {405}  # the framework's status table
    assert "service_error" not in statuses  # a base class's default, never raised as such


def test_the_configuration_page_lists_every_setting_with_its_default() -> None:
    prefix = Settings.model_config.get("env_prefix", "")
    rows = _table(CONFIGURATION_PAGE, ("variable", "default", "meaning"))
    documented = {_code(row[0]): row for row in rows}
    assert len(documented) == len(rows), "a variable is listed twice"
    expected = {f"{prefix}{name}".upper(): name for name in Settings.model_fields}
    assert sorted(documented) == sorted(expected), "docs/configuration.md and Settings name different variables"
    for variable, name in expected.items():
        info = Settings.model_fields[name]
        assert info.alias is None and info.validation_alias is None, f"{name} has an alias: document it"
        cell = documented[variable][1]
        text = "" if cell == "empty" else _code(cell)
        assert info.annotation is not None, name
        value = TypeAdapter(info.annotation).validate_python(text)
        assert value == info.default, f"{variable}: documented default {cell}, Settings says {info.default!r}"
        assert documented[variable][2], f"{variable} has no meaning"


def test_every_gradient_variable_the_docs_mention_exists() -> None:
    prefix = Settings.model_config.get("env_prefix", "")
    settings = {f"{prefix}{name}".upper() for name in Settings.model_fields}
    for page in _markdown_files():
        for variable in set(re.findall(r"\bGRADIENT_[A-Z0-9_]+\b", page.read_text(encoding="utf-8"))):
            assert variable in settings or variable in NON_SETTING_VARIABLES, (
                f"{page.relative_to(ROOT)} mentions {variable}, which is no setting"
            )
    sources = "".join(path.read_text(encoding="utf-8") for path in (ROOT / "tests").rglob("*.py"))
    for variable in NON_SETTING_VARIABLES:
        assert variable in sources, f"{variable} is no longer read by the tests: drop it from the docs"


def test_the_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"


def test_the_readme_points_at_nothing_outside_the_repository() -> None:
    assert "../" not in README.read_text(encoding="utf-8")


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    text = _without_code(page.read_text(encoding="utf-8"))
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    targets += re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, flags=re.MULTILINE)
    broken = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("//"):
            continue  # an absolute URL (http:, mailto:)
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if (
            not resolved.is_relative_to(ROOT)
            or not resolved.exists()
            or (anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved))
        ):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} has links that do not resolve: {broken}"
