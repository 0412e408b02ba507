"""Compiled Adam steps against independent torch.optim loops, in float64: the kernel's runs stay
within 1e-7 of torch.optim's, stop where they would, and only long runs ask for a compile.

Each compile takes tens of seconds on a small machine, so these tests share two compiles."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import torch

from service.compute.compiled import CHUNK, ChunkCompiler
from service.compute.objectives import OBJECTIVES
from service.compute.optimize import Objective, Schedule, optimize
from service.compute.optimizers import OPTIMIZERS
from tests.compute.test_optimize import STARTS, independent_loop

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")

HIMMELBLAU = Objective(OBJECTIVES.get("himmelblau").fn, batched=True)
VARIANTS = [
    ("adam", {"lr": 0.01}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.05, "amsgrad": True}),
]


@pytest.fixture(scope="module")
def compiled() -> dict[str, ChunkCompiler]:
    """One compiler per variant, its case compiled by a first run."""
    compilers = {}
    for name, options in VARIANTS:
        spec = OPTIMIZERS.get(name)
        compiler = ChunkCompiler(min_steps=1)
        schedule = Schedule(CHUNK * 8, 10_000)  # long enough for a stretch of whole chunks
        optimize(HIMMELBLAU, STARTS, [(spec, {**spec.defaults(), **options})], schedule, compiler)
        compiler.wait()
        assert compiler.compiled() == 1
        compilers[name] = compiler
    return compilers


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=[name for name, _ in VARIANTS])
def test_compiled_runs_equal_independent_loops(
    compiled: dict[str, ChunkCompiler], name: str, options: dict[str, Any]
) -> None:
    spec = OPTIMIZERS.get(name)
    settings = {**spec.defaults(), **options}
    steps = 1_000
    outcome = optimize(HIMMELBLAU, STARTS, [(spec, settings)], Schedule(steps, 500), compiled[name])
    for run, start in zip(outcome.runs(), STARTS, strict=True):
        expected = independent_loop(spec, settings, HIMMELBLAU.fn, start, steps)
        torch.testing.assert_close(run.x, expected, rtol=0, atol=1e-7)
        assert run.steps == steps
        assert run.trajectory.step == [0, 500, 1_000]


def test_the_kernel_is_used_for_every_learning_rate(
    compiled: dict[str, ChunkCompiler], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hyper-parameters are kernel inputs: another learning rate finds the compiled chunk."""
    spec = OPTIMIZERS.get("adam")
    compiler = compiled["adam"]
    calls = []
    original = compiler.chunk

    def counting(*args: Any) -> Any:
        found = original(*args)
        calls.append(found is not None)
        return found

    monkeypatch.setattr(compiler, "chunk", counting)
    settings = {**spec.defaults(), "lr": 0.003}
    outcome = optimize(HIMMELBLAU, STARTS, [(spec, settings)], Schedule(300, 300), compiler)
    assert calls and all(calls)
    expected = independent_loop(spec, settings, HIMMELBLAU.fn, STARTS[2], 300)
    torch.testing.assert_close(outcome.runs()[2].x, expected, rtol=0, atol=1e-7)


def test_a_run_that_converges_inside_a_compiled_stretch_stops_at_its_step(compiled: dict[str, ChunkCompiler]) -> None:
    spec = OPTIMIZERS.get("adam")
    settings = {**spec.defaults(), "lr": 0.01}
    tolerance = 0.05
    by_compiled = optimize(HIMMELBLAU, STARTS, [(spec, settings)], Schedule(2_000, 1_000, tolerance), compiled["adam"])
    one_by_one = optimize(HIMMELBLAU, STARTS, [(spec, settings)], Schedule(2_000, 1, tolerance, trajectories=False))
    for fast, slow in zip(by_compiled.runs(), one_by_one.runs(), strict=True):
        assert fast.stopped == slow.stopped == "tolerance"
        assert fast.steps == slow.steps
        assert fast.steps % 1_000 != 0  # it stopped between two recorded steps
        torch.testing.assert_close(fast.x, slow.x, rtol=0, atol=1e-7)


def test_short_runs_ask_for_no_compile() -> None:
    compiler = ChunkCompiler(min_steps=10_000)
    spec = OPTIMIZERS.get("adam")
    optimize(HIMMELBLAU, STARTS, [(spec, spec.defaults())], Schedule(500, 100), compiler)
    compiler.wait()
    assert compiler.compiled() == 0
