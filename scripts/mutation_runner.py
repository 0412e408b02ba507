"""Mutation testing of the compute registries and the wire codec (run it as ``scripts/mutation``).

Mutants come from mutmut 2.5.1's mutation engine, which mutates module-level code too (the
registry entries: names, defaults, flags); mutmut 3 only mutates function bodies. Each mutant is
written into a copy of the tree (never the working tree) and that module's own tests run against
it in a child forked from this process, which has already imported torch, pytest and the other
third-party modules: a mutant costs its tests, not a 3 s interpreter start. ``--jobs`` copies run
side by side. The tests that killed earlier mutants (of the same and nearby lines first) run
first, and pytest stops at the first failure, so a killed mutant usually costs a test or two; a
final unmutated run in that order checks that the tests do not depend on their order.

A mutant is killed when its tests fail (or fail to import it), survives when they pass, and
times out past ``--timeout`` seconds (default: 4x the unmutated run, at least 20 s). Surviving
mutants listed in scripts/mutation.toml as equivalent are reported apart, with their reasons.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import traceback
from collections import Counter, deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

MODULE_PATHS: dict[str, str] = {}
"""Each module's file, relative to the tree (the [modules] table of scripts/mutation.toml)."""
COPY_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "*.egg-info"
)
# (-W: the children find pytest plugins such as anyio already imported, and cannot rewrite them.)
PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider", "--no-header", "-W", "ignore::pytest.PytestAssertRewriteWarning"]


@dataclass
class Mutant:
    module: str
    line_number: int  # 1-based
    line: str
    mutated: str
    source: str
    status: str = "untested"
    seconds: float = 0.0
    killed_by: str = ""

    @property
    def where(self) -> str:
        return f"{MODULE_PATHS[self.module]}:{self.line_number}"


@dataclass(frozen=True)
class Equivalent:
    module: str
    line: str
    mutant: str
    reason: str


# --- the tree copies -------------------------------------------------------------------------


def make_copies(root: Path, work: Path, jobs: int) -> list[Path]:
    """Fresh copies of the tree (without .venv, .git and caches), byte-compiled so that children
    import the unmutated modules fast; the mutated module is never byte-compiled."""
    slots = []
    for index in range(jobs):
        slot = work / f"tree{index}"
        if slot.exists():
            shutil.rmtree(slot)
        shutil.copytree(root, slot, ignore=COPY_IGNORE, symlinks=True)
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(slot / "service"), str(slot / "tests")], check=True
        )
        slots.append(slot)
    return slots


def drop_bytecode(slot: Path, module: str) -> None:
    path = slot / MODULE_PATHS[module]
    for cached in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
        cached.unlink()


# --- mutants from mutmut's engine ------------------------------------------------------------


def list_mutants(module: str, source: str) -> list[Mutant]:
    from mutmut import ALL, Context, list_mutations, mutate  # type: ignore[import-untyped]

    filename = MODULE_PATHS[module]
    ids = list_mutations(Context(source=source, filename=filename, mutation_id=ALL))
    original = source.splitlines()
    mutants = []
    for mutation_id in ids:
        mutated_source, count = mutate(Context(source=source, filename=filename, mutation_id=mutation_id))
        assert count == 1, mutation_id
        line_number, line, mutated = changed_lines(original, mutated_source.splitlines())
        mutants.append(Mutant(module, line_number, line, mutated, mutated_source))
    return mutants


def changed_lines(original: list[str], mutated: list[str]) -> tuple[int, str, str]:
    """The first changed line (1-based), and the original and mutated lines, each stripped and
    joined with " / ", as the report and scripts/mutation.toml show them."""
    matcher = difflib.SequenceMatcher(a=original, b=mutated, autojunk=False)
    first, old, new = 0, list[str](), list[str]()
    for tag, old_start, old_end, new_start, new_end in matcher.get_opcodes():
        if tag != "equal":
            first = first or old_start + 1
            old.extend(line.strip() for line in original[old_start:old_end])
            new.extend(line.strip() for line in mutated[new_start:new_end])
    return first, " / ".join(old), " / ".join(new) or "(removed)"


# --- running tests in forked children --------------------------------------------------------


class HypothesisPlugin:
    """Same examples for every mutant (derandomize), no example database shared between them, and
    no shrinking: a failing example kills the mutant as it is (shrinking one can take minutes)."""

    def pytest_configure(self, config: Any) -> None:
        from hypothesis import Phase, settings

        phases = [Phase.explicit, Phase.reuse, Phase.generate]
        profile = settings(settings.default, derandomize=True, database=None, phases=phases, print_blob=False)
        settings.register_profile("mutation", profile)
        settings.load_profile("mutation")


class OrderPlugin:
    """Runs first the tests that killed earlier mutants (those of the same and nearby lines
    first), so that with -x a mutant is usually killed by its first test or two; records the
    first failing test."""

    def __init__(self, first: list[str], killer: Path) -> None:
        self.first, self.killer, self.recorded = first, killer, False

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        rank = {nodeid: index for index, nodeid in enumerate(self.first)}
        front = sorted((item for item in items if item.nodeid in rank), key=lambda item: rank[item.nodeid])
        items[:] = front + [item for item in items if item.nodeid not in rank]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed and not self.recorded:
            self.killer.write_text(report.nodeid)
            self.recorded = True


@dataclass
class KillHistory:
    """Which tests killed mutants, overall and by source line."""

    kills: Counter[str]
    by_line: dict[int, list[str]]

    def first_tests(self, line: int, limit: int = 40) -> list[str]:
        ordered = list(self.by_line.get(line, []))
        for distance in range(1, 6):
            ordered += self.by_line.get(line - distance, []) + self.by_line.get(line + distance, [])
        ordered += [nodeid for nodeid, _ in self.kills.most_common(limit)]
        return list(dict.fromkeys(ordered))[:limit]

    def record(self, line: int, nodeid: str) -> None:
        self.kills[nodeid] += 1
        killers = self.by_line.setdefault(line, [])
        if nodeid in killers:
            killers.remove(nodeid)
        killers.insert(0, nodeid)


def preload(slot: Path, tests: list[str], log: Path) -> float:
    """Run the unmutated tests once in a subprocess, and import here the third-party modules
    they loaded, so that forked children start warm. Returns the subprocess's test time."""
    listing = log.with_suffix(".modules")
    probe = (
        "import sys, time, pytest\n"
        "from mutation_runner import HypothesisPlugin\n"
        f"sys.path.insert(0, {str(slot)!r})\n"
        "start = time.perf_counter()\n"
        f"code = pytest.main({[*tests, *PYTEST_ARGS]!r}, plugins=[HypothesisPlugin()])\n"
        "elapsed = time.perf_counter() - start\n"
        f"open({str(listing)!r}, 'w').write('\\n'.join([str(elapsed), *sys.modules]))\n"
        "sys.exit(int(code))\n"
    )
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": f"{slot}{os.pathsep}{here}", "PYTHONDONTWRITEBYTECODE": "1"}
    with log.open("w") as out:
        result = subprocess.run([sys.executable, "-c", probe], cwd=slot, env=env, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"The unmutated tests fail (exit {result.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    elapsed, *modules = listing.read_text().splitlines()
    local = {path.name.removesuffix(".py") for path in slot.iterdir()} | {"__main__", "__mp_main__"}
    local |= {"mutation_runner", "conftest"}
    for name in modules:
        if name.partition(".")[0] in local or name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception:  # some modules import only inside their own package's setup
            continue
    return float(elapsed)


def child(slot: Path, tests: list[str], log: Path, module: str, first: list[str]) -> NoReturn:
    """In the forked child: run the tests on the copy, exit with pytest's status."""
    code = 99
    try:
        os.setpgid(0, 0)
        descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(descriptor, 1)
        os.dup2(descriptor, 2)
        os.chdir(slot)
        sys.path.insert(0, str(slot))
        plugins = [HypothesisPlugin(), OrderPlugin(first, log.with_suffix(".killer"))]
        code = int(pytest.main([*tests, *PYTEST_ARGS], plugins=plugins))
        dotted = MODULE_PATHS[module].removesuffix(".py").replace("/", ".")
        loaded = sys.modules.get(dotted)
        if code == 0 and (loaded is None or not Path(str(loaded.__file__)).is_relative_to(slot)):
            print(f"{dotted} was not imported from {slot}: {loaded}", flush=True)
            code = 98
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


@dataclass
class Running:
    pid: int
    slot: int
    mutant: Mutant | None
    start: float


def status_of(code: int, timed_out: bool) -> str:
    if timed_out:
        return "timeout"
    if code == 0:
        return "survived"
    if code in (5, 98, 99):  # no tests, the module not from the copy, the runner crashed
        return f"error({code})"
    # Test failures (1), import errors in a test module (2) or in conftest (4: the unmutated
    # run has shown the arguments are right), internal errors (3), crashes (signals).
    return "killed"


def run_all(
    slots: list[Path],
    module: str,
    tests: list[str],
    mutants: list[Mutant | None],
    timeout: float,
    logs: Path,
    history: KillHistory,
) -> None:
    """Run each mutant (None: the unmutated code) in the first free slot; record its status."""
    target = Path(MODULE_PATHS[module])
    originals = [(slot / target).read_text() for slot in slots]
    pending: deque[Mutant | None] = deque(mutants)
    running: dict[int, Running] = {}
    free = list(range(len(slots)))
    done, total, last_print = 0, len(mutants), time.monotonic()
    try:
        while pending or running:
            while pending and free:
                index = free.pop()
                mutant = pending.popleft()
                (slots[index] / target).write_text(mutant.source if mutant else originals[index])
                drop_bytecode(slots[index], module)
                first = history.first_tests(mutant.line_number if mutant else 0)
                (logs / f"slot{index}.killer").unlink(missing_ok=True)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    child(slots[index], tests, logs / f"slot{index}.log", module, first)
                running[pid] = Running(pid, index, mutant, time.monotonic())
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                now = time.monotonic()
                for job in running.values():
                    if now - job.start > timeout:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(job.pid, signal.SIGKILL)
                        job.start = -1e9  # marks it timed out
                time.sleep(0.01)
                continue
            job = running.pop(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # anything the tests left behind
            timed_out = job.start < 0
            code = os.waitstatus_to_exitcode(wait_status)
            (slots[job.slot] / target).write_text(originals[job.slot])
            free.append(job.slot)
            if job.mutant is None:
                if code != 0:
                    log = (logs / f"slot{job.slot}.log").read_text()
                    sys.exit(
                        f"The unmutated tests fail in a forked child (exit {code}); after a run, that means they"
                        f" depend on their order (earlier mutants' killers run first):\n{log[-3000:]}"
                    )
                continue
            job.mutant.status = status_of(code, timed_out)
            job.mutant.seconds = 0.0 if timed_out else time.monotonic() - job.start
            killer = logs / f"slot{job.slot}.killer"
            if job.mutant.status == "killed" and killer.exists():
                job.mutant.killed_by = killer.read_text()
                history.record(job.mutant.line_number, job.mutant.killed_by)
            if job.mutant.status.startswith("error"):
                log = (logs / f"slot{job.slot}.log").read_text()
                sys.exit(f"{job.mutant.where}: the test run itself failed (exit {code}):\n{log[-3000:]}")
            done += 1
            if time.monotonic() - last_print > 30 or done == total:
                last_print = time.monotonic()
                print(f"  {done}/{total} mutants run", flush=True)
    finally:  # interrupted, or a run failed: leave no child behind and the copies unmutated
        for job in running.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(job.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(job.pid, 0)
        for slot, original in zip(slots, originals, strict=True):
            (slot / target).write_text(original)


# --- the report ------------------------------------------------------------------------------


def load_config(path: Path) -> tuple[dict[str, list[str]], list[Equivalent]]:
    config = tomllib.loads(path.read_text())
    tests: dict[str, list[str]] = config["tests"]
    MODULE_PATHS.update(config["modules"])
    equivalents = [Equivalent(**entry) for entry in config.get("equivalent", [])]
    return tests, equivalents


def explain(mutant: Mutant, equivalents: list[Equivalent]) -> str | None:
    for entry in equivalents:
        if (entry.module, entry.line.strip(), entry.mutant.strip()) == (
            mutant.module,
            mutant.line.strip(),
            mutant.mutated.strip(),
        ):
            return entry.reason
    return None


def report(module: str, mutants: list[Mutant], equivalents: list[Equivalent], seconds: float) -> dict[str, Any]:
    count = {status: sum(m.status == status for m in mutants) for status in ("killed", "survived", "timeout")}
    survivors = [m for m in mutants if m.status == "survived"]
    explained = [(m, reason) for m in survivors if (reason := explain(m, equivalents)) is not None]
    unexplained = [m for m in survivors if explain(m, equivalents) is None]
    detected = count["killed"] + count["timeout"]
    score = detected / len(mutants) if mutants else 1.0
    adjusted = detected / (len(mutants) - len(explained)) if len(mutants) > len(explained) else 1.0
    print(
        f"{MODULE_PATHS[module]}: {len(mutants)} mutants, {count['killed']} killed, "
        f"{count['survived']} survived ({len(explained)} of them equivalent), {count['timeout']} timeouts; "
        f"score {score:.1%} ({adjusted:.1%} without the equivalents); {seconds / 60:.1f} min"
    )
    for mutant in unexplained:
        print(f"  SURVIVED {mutant.where}: {mutant.line}  ->  {mutant.mutated}")
    for mutant, reason in explained:
        print(f"  equivalent {mutant.where}: {mutant.line}  ->  {mutant.mutated}  ({reason})")
    for mutant in mutants:
        if mutant.status == "timeout":
            print(f"  timeout {mutant.where}: {mutant.line}  ->  {mutant.mutated}")
    return {
        "module": module,
        "mutants": len(mutants),
        **count,
        "equivalent": len(explained),
        "score": score,
        "score_without_equivalents": adjusted,
        "seconds": seconds,
        "unexplained": len(unexplained),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="modules named in scripts/mutation.toml's [modules] (default: all)")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mutation-work"))
    parser.add_argument("--jobs", type=int, default=2, help="mutants run side by side, each in its own copy")
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default: 4x the baseline, >= 20)")
    parser.add_argument("--line", type=int, action="append", help="only the mutants on this line (repeatable)")
    parser.add_argument("--shard", help="K/N: only every N-th mutant from the K-th on (split a long run into N jobs)")
    parser.add_argument("--list", action="store_true", help="list the mutants; run nothing")
    parser.add_argument("--report", action="store_true", help="report the last run again; run nothing")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a mutant survives unexplained")
    args = parser.parse_args()

    root: Path = args.root.resolve()
    tests_of, equivalents = load_config(root / "scripts" / "mutation.toml")
    modules = [Path(name).name.removesuffix(".py") for name in args.modules] or list(MODULE_PATHS)
    for module in modules:
        if module not in tests_of:
            sys.exit(f"No tests are mapped to '{module}' in scripts/mutation.toml (known: {', '.join(tests_of)}).")

    work: Path = args.work.resolve()
    if work == root or root in work.parents:
        sys.exit("--work must lie outside the working tree.")
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # mutmut puts the working directory on sys.path when it is imported
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    slots: list[Path] = []
    summaries = []
    for module in modules:
        if args.report:
            saved = json.loads((work / f"{module}.json").read_text())
            mutants = [Mutant(**fields, source="") for fields in saved["mutants"]]
            summaries.append(report(module, mutants, equivalents, saved["seconds"]))
            continue
        source = (root / MODULE_PATHS[module]).read_text()
        mutants = list_mutants(module, source)
        if args.line:
            mutants = [m for m in mutants if m.line_number in args.line]
        if args.shard:
            index, count = (int(part) for part in args.shard.split("/"))
            mutants = mutants[index - 1 :: count]
        if args.list:
            for mutant in mutants:
                print(f"{mutant.where}: {mutant.line}  ->  {mutant.mutated}")
            continue
        tests = [name for name in tests_of[module] if (root / name).exists()]
        missing = sorted(set(tests_of[module]) - set(tests))
        if not tests:
            print(f"{MODULE_PATHS[module]}: skipped, none of its tests exist ({', '.join(missing)})")
            continue
        if not slots:
            print(f"Copying the tree to {work} ({args.jobs} copies)...", flush=True)
            slots = make_copies(root, work, args.jobs)
        started = time.monotonic()
        baseline = preload(slots[0], tests, logs / f"{module}-baseline.log")
        if threading.active_count() > 1:
            print(f"warning: {threading.active_count()} threads before forking", file=sys.stderr)
        timeout = args.timeout or max(20.0, 4 * baseline)
        print(
            f"== {MODULE_PATHS[module]}: {len(mutants)} mutants against {' '.join(tests)}"
            + (f" (missing, skipped: {', '.join(missing)})" if missing else "")
            + f"; unmutated tests {baseline:.1f} s, timeout {timeout:.0f} s",
            flush=True,
        )
        history = KillHistory(Counter(), {})
        run_all(slots, module, tests, [None], timeout, logs, history)  # the forked path passes unmutated
        run_all(slots, module, tests, list(mutants), timeout, logs, history)
        # The killers ran first, out of file order: the unmutated code must pass in that order too.
        run_all(slots, module, tests, [None], timeout, logs, history)
        seconds = time.monotonic() - started
        saved = [{key: value for key, value in asdict(m).items() if key != "source"} for m in mutants]
        (work / f"{module}.json").write_text(json.dumps({"seconds": seconds, "mutants": saved}, indent=1))
        summaries.append(report(module, mutants, equivalents, seconds))
    if len(summaries) > 1:
        print("\nmodule        mutants  killed  survived  equivalent  timeouts   score  minutes")
        for s in summaries:
            print(
                f"{s['module']:<13} {s['mutants']:>7} {s['killed']:>7} {s['survived']:>9} {s['equivalent']:>11}"
                f" {s['timeout']:>9} {s['score']:>7.1%} {s['seconds'] / 60:>8.1f}"
            )
    print(f"\nPer-mutant statuses: {work}/<module>.json; test output of the last runs: {logs}")
    if args.strict and any(s["unexplained"] for s in summaries):
        sys.exit(1)


if __name__ == "__main__":
    main()
