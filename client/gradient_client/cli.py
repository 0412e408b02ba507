"""``gradient-client``: the service from a shell.

    gradient-client differentiate '(x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2' x=3,2 --hessian
    gradient-client differentiate 'sum(x * y)' x=1,2 y=3,4 --tangent x=1,0 --tangent y=0,1 --jvp --hvp
    gradient-client optimize himmelblau --starts '1,0;-4,0' --optimizer adam:lr=0.05 --steps 2000
    gradient-client info

The service's URL comes from ``--url``, else the GRADIENT_CLIENT_URL environment variable, else
http://127.0.0.1:8000; the API key from ``--api-key``, else GRADIENT_CLIENT_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np

from gradient_client import __version__
from gradient_client._calls import Derivative
from gradient_client._wire import Array, TensorShape
from gradient_client.client import Client
from gradient_client.errors import GradientError
from gradient_client.results import DifferentiateResult, DryRunResult, OptimizeResult, ProgressEvent

URL_VARIABLE = "GRADIENT_CLIENT_URL"
API_KEY_VARIABLE = "GRADIENT_CLIENT_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_STEPS = 20_000
DERIVATIVES: tuple[Derivative, ...] = ("grad", "jacobian", "hessian", "jvp", "hvp")
BAR_WIDTH = 30


# --- reading values ----------------------------------------------------------------------------


def parse_tensor(text: str) -> Any:
    """``1,2,3`` (a vector), ``3`` (a number), ``1,2;3,4`` (rows of a matrix), or JSON
    (``[[1, 2], [3, 4]]``); ``nan``, ``inf`` and ``-inf`` are numbers."""
    text = text.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a JSON array: {text!r} ({exc})") from None
    try:
        if ";" in text:
            return [_vector(row) for row in text.split(";") if row.strip()]
        if "," in text:
            return _vector(text)
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number, a list 1,2,3 or JSON: {text!r}") from None


def _vector(text: str) -> list[float]:
    return [float(item) for item in text.split(",") if item.strip()]


def parse_assignment(text: str) -> tuple[str, Any]:
    """``name=values``."""
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUES, got {text!r}")
    return name.strip(), parse_tensor(value)


def parse_optimizer(text: str) -> str | dict[str, Any]:
    """``adam``, ``adam:lr=0.05,amsgrad=true`` or a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        try:
            choice: dict[str, Any] = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a JSON object: {text!r} ({exc})") from None
        return choice
    name, colon, rest = text.partition(":")
    if not colon:
        return name
    settings: dict[str, Any] = {"name": name}
    for item in _split_settings(rest):
        key, equals, value = item.partition("=")
        if not equals:
            raise argparse.ArgumentTypeError(f"expected key=value in {text!r}, got {item!r}")
        try:
            settings[key.strip()] = json.loads(value)
        except ValueError:
            settings[key.strip()] = value.strip()
    return settings


def _split_settings(text: str) -> list[str]:
    """``lr=0.1,betas=[0.9,0.99]``: commas outside brackets separate settings."""
    return [part for part in re.split(r",(?![^\[]*\])", text) if part.strip()]


# --- writing values ----------------------------------------------------------------------------


def format_array(value: Array | TensorShape | float | None) -> str:
    """Nested lists, each number in the shortest text that reads back in its own dtype."""
    if value is None:
        return "null"
    if isinstance(value, TensorShape):
        return f"shape {list(value.shape)} {value.dtype}"
    array = np.asarray(value)
    if array.ndim == 0:
        return _number(array[()])
    return "[" + ", ".join(format_array(row) for row in array) + "]"


def _number(value: Any) -> str:
    if isinstance(value, np.integer | int):
        return str(int(value))
    if math.isnan(value):
        return "nan"
    return str(value if isinstance(value, np.floating) else float(value))


def to_json(value: Any) -> Any:
    """Results as JSON, non-finite numbers as the wire format's strings."""
    if isinstance(value, TensorShape):
        return {"shape": list(value.shape), "dtype": value.dtype}
    if isinstance(value, np.ndarray | np.generic):
        return to_json(value.tolist())
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


# --- commands ----------------------------------------------------------------------------------


def run_info(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    info = client.info()
    if args.json:
        print(json.dumps(info, indent=2), file=out)
        return
    print(f"{info['name']} {info['version']} at {client.base_url}", file=out)
    print(f"torch {info['torch_version']}, Python {info['python_version']}", file=out)
    print(f"devices: {', '.join(info['devices'])} (default {info['default_device']})", file=out)
    print(f"dtypes: {', '.join(info['dtypes'])}; encodings: {', '.join(info['encodings'])}", file=out)
    print("limits:", file=out)
    for name, value in info["limits"].items():
        print(f"  {name}: {value}", file=out)


def run_list(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    catalog: list[dict[str, Any]]
    if args.kind == "functions":
        functions = client.functions()
        catalog = functions["functions"]
    else:
        catalog = getattr(client, args.kind)()
    if args.json:
        print(json.dumps(catalog, indent=2), file=out)
        return
    for entry in catalog:
        detail = entry.get("signature") or entry.get("formula") or entry.get("doc") or ""
        print(f"{entry['name']}: {detail}", file=out)


def run_differentiate(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    derivatives: list[Derivative] = [name for name in DERIVATIVES if getattr(args, name)] or ["grad"]
    tangents: dict[str, Any] = {}
    for name, value in args.tangent or []:
        if name in tangents:
            raise SystemExit(f"error: two tangents for {name}")
        tangents[name] = value
    result = client.differentiate(
        args.expression,
        dict(args.inputs),
        wrt=args.wrt,
        derivatives=derivatives,
        grad_output=args.grad_output,
        tangents=tangents or None,
        batch=args.batch,
        dry_run=args.dry_run,
        dtype=args.dtype,
        device=args.device,
    )
    if args.json:
        print(json.dumps(to_json(_differentiation_fields(result))), file=out)
        return
    for name, value in _differentiation_fields(result).items():
        if name == "cost":
            print(f"cost: {value['flops']} flops, {value['bytes']} bytes at the peak", file=out)
        else:
            print(f"{name}: {format_array(value)}", file=out)


def _differentiation_fields(result: DifferentiateResult | DryRunResult) -> dict[str, Any]:
    """Every result present, flattened to ``grad.x``, ``hessian.x.y`` ... names."""
    fields: dict[str, Any] = {"value": result.value}
    for kind in ("grad", "jacobian", "hvp"):
        for name, value in (getattr(result, kind) or {}).items():
            fields[f"{kind}.{name}"] = value
    for row, blocks in (result.hessian or {}).items():
        for column, value in blocks.items():
            fields[f"hessian.{row}.{column}"] = value
    if result.jvp is not None:
        fields["jvp"] = result.jvp
    if result.cost is not None:
        fields["cost"] = result.cost
    return fields


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def run_optimize(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    objective: str | dict[str, Any]
    if IDENTIFIER.fullmatch(args.objective) and not args.inputs:
        objective = args.objective
    else:
        objective = {"expression": args.objective, "variable": args.variable, "inputs": dict(args.inputs)}
    if (args.x0 is None) == (args.starts is None):
        raise SystemExit("error: give one of --x0 and --starts")
    stream = client.optimize_stream(
        objective,
        x0=args.x0,
        starts=args.starts,
        optimizer=args.optimizer or "adam",
        steps=args.steps,
        record_every=args.record_every,
        tolerance=args.tolerance,
        report="summary" if args.summary else "runs",
        dtype=args.dtype,
        device=args.device,
    )
    bar = ProgressBar(args.steps, err, enabled=not args.quiet)
    result: OptimizeResult | None = None
    with stream:
        for event in stream:
            if isinstance(event, ProgressEvent):
                bar.update(event)
            else:
                result = event.result
    bar.finish()
    assert result is not None
    if args.json:
        print(json.dumps(to_json(_optimize_json(result))), file=out)
    elif result.summary is not None:
        _print_summary(result, out)
    else:
        _print_runs(result, out)


class ProgressBar:
    """Plain text on stderr: redrawn in place on a terminal, one line per event elsewhere."""

    def __init__(self, steps: int, stream: TextIO, enabled: bool = True) -> None:
        self.steps = max(steps, 1)
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self.drawn = False

    def update(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        fraction = min(event.step / self.steps, 1.0)
        filled = round(fraction * BAR_WIDTH)
        values = [run.value for run in event.runs if not math.isnan(run.value)]
        best = f", best value {min(values):.6g}" if values else ""
        line = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%} step {event.step}/{self.steps}{best}"
        if self.tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.enabled and self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _print_runs(result: OptimizeResult, out: TextIO) -> None:
    for run in result.runs or []:
        name = run.optimizer.get("name", "?")
        line = (
            f"run {run.start} ({name}) from {format_array(run.x0)}: x {format_array(run.x)}, "
            f"value {run.value:.6g}, grad norm {run.grad_norm:.3g}, {run.steps} steps ({run.stopped})"
        )
        if run.nearest_minimum is not None:
            nearest = run.nearest_minimum
            line += f"; nearest minimum {format_array(nearest.x)} at {nearest.distance:.3g}"
        print(line, file=out)


def _print_summary(result: OptimizeResult, out: TextIO) -> None:
    summary = result.summary
    assert summary is not None
    print(f"{len(summary.value)} runs ({', '.join(summary.optimizers)})", file=out)
    print("stopped: " + ", ".join(f"{reason} {count}" for reason, count in summary.stopped.items()), file=out)
    finite = summary.value[np.isfinite(summary.value)]
    if finite.size:
        print(f"values: best {finite.min():.6g}, median {np.median(finite):.6g}, worst {finite.max():.6g}", file=out)
    for basin in summary.minima or []:
        print(f"minimum {format_array(basin.x)} (value {basin.value:.6g}): reached by {basin.count}", file=out)


def _optimize_json(result: OptimizeResult) -> Any:
    if result.summary is not None:
        summary = result.summary
        return {
            "summary": {
                "optimizers": summary.optimizers,
                "x": summary.x,
                "value": summary.value,
                "steps": summary.steps,
                "stopped": summary.stopped,
                "minima": None
                if summary.minima is None
                else [{"x": b.x, "value": b.value, "count": b.count} for b in summary.minima],
            }
        }
    return {
        "runs": [
            {
                "start": run.start,
                "optimizer": run.optimizer,
                "x0": run.x0,
                "x": run.x,
                "value": run.value,
                "grad_norm": run.grad_norm,
                "steps": run.steps,
                "stopped": run.stopped,
            }
            for run in result.runs or []
        ]
    }


# --- the parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradient-client",
        description="Values and derivatives from Gradient Service, from a shell.",
        epilog=f"The URL defaults to ${URL_VARIABLE}, else {DEFAULT_URL}; the API key to ${API_KEY_VARIABLE}.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--url", default=None, help=f"the service's root URL (default: ${URL_VARIABLE} or {DEFAULT_URL})"
    )
    parser.add_argument("--api-key", default=None, help=f"sent as Authorization: Bearer (default: ${API_KEY_VARIABLE})")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for an answer (default 120)")
    parser.add_argument(
        "--retries", type=int, default=3, help="retries of a busy service (429, 503 overloaded) and connection failures"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("info", help="the service's versions, devices and limits")

    listing = commands.add_parser("list", help="a catalog: activations, losses, functions, objectives, optimizers")
    listing.add_argument("kind", choices=["activations", "losses", "functions", "objectives", "optimizers"])

    diff = commands.add_parser(
        "differentiate",
        help="a formula's value and derivatives",
        description="Inputs are NAME=VALUES: 1,2,3 (a vector), 3 (a number), '1,2;3,4' (a matrix's rows) or JSON.",
    )
    diff.add_argument("expression", help="the formula (see GET /v1/functions)")
    diff.add_argument("inputs", nargs="*", type=parse_assignment, metavar="NAME=VALUES", help="the inputs")
    diff.add_argument("--grad", action="store_true", help="return the gradient (the default)")
    diff.add_argument("--jacobian", action="store_true", help="return the Jacobian")
    diff.add_argument("--hessian", action="store_true", help="return the Hessian")
    diff.add_argument("--jvp", action="store_true", help="return the JVP along the --tangent directions")
    diff.add_argument("--hvp", action="store_true", help="return the Hessian times the --tangent directions")
    diff.add_argument(
        "--tangent",
        action="append",
        type=parse_assignment,
        metavar="NAME=VALUES",
        help="this input's direction, for --jvp and --hvp alike (repeatable, one per input)",
    )
    diff.add_argument("--wrt", action="append", metavar="NAME", help="differentiate w.r.t. this input (repeatable)")
    diff.add_argument(
        "--batch", action="append", metavar="NAME", help="this input's first dimension is a batch of points"
    )
    diff.add_argument("--grad-output", type=parse_tensor, metavar="VALUES", help="the cotangent of a non-scalar value")
    diff.add_argument("--dry-run", action="store_true", help="shapes and the estimated cost, computing nothing")
    _common(diff)

    opt = commands.add_parser(
        "optimize",
        help="optimisation runs, with a progress bar",
        description="OBJECTIVE is a test function's name (gradient-client list objectives) or an expression of "
        "--variable, with NAME=VALUES inputs. Points are 1,0 or JSON; several starts '1,0;-4,0' (or --starts=-4,0).",
    )
    opt.add_argument("objective", help="a name (himmelblau) or an expression (sum((x - c) ** 2))")
    opt.add_argument("inputs", nargs="*", type=parse_assignment, metavar="NAME=VALUES", help="an expression's inputs")
    opt.add_argument("--variable", default="x", help="the expression's variable (default x)")
    opt.add_argument("--x0", type=parse_tensor, metavar="POINT", help="one start")
    opt.add_argument("--starts", type=parse_tensor, metavar="POINTS", help="several starts: '1,0;-4,0' or JSON")
    opt.add_argument(
        "--optimizer",
        action="append",
        type=parse_optimizer,
        metavar="NAME[:KEY=VALUE,...]",
        help="adam (the default), adam:lr=0.05, ... (repeatable)",
    )
    opt.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"steps per run (default {DEFAULT_STEPS})")
    opt.add_argument("--record-every", type=int, default=None, help="steps between progress events (default 2000)")
    opt.add_argument("--tolerance", type=float, default=None, help="stop a run at this gradient norm")
    opt.add_argument("--summary", action="store_true", help="final points and basins, not every run")
    opt.add_argument("--quiet", action="store_true", help="no progress bar")
    _common(opt)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=["float32", "float64"], default=None, help="default: float32")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the server's)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    url = args.url or os.environ.get(URL_VARIABLE) or DEFAULT_URL
    api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    try:
        with Client(url, api_key=api_key, timeout=args.timeout, retries=args.retries) as client:
            if args.command == "info":
                run_info(client, args, sys.stdout)
            elif args.command == "list":
                run_list(client, args, sys.stdout)
            elif args.command == "differentiate":
                run_differentiate(client, args, sys.stdout)
            else:
                run_optimize(client, args, sys.stdout, sys.stderr)
    except (GradientError, TypeError, ValueError) as error:
        # The service's errors, and the client's own refusals of a value before sending it (a
        # ragged array, a string for a number, a NaN outside a tensor).
        print(f"error: {_one_line(str(error))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # stdout closed early (| head): quiet, as Python's docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
