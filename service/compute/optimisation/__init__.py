"""Optimisation runs: the objectives and optimizers of the catalogs, the engine that runs many
starts at once (``engine``: the loop; ``steppers``: how a group of runs is evaluated and
stepped; ``runs``: what it runs and reports), and the endpoints' work (``tasks``)."""

from service.compute.optimisation.engine import optimize
from service.compute.optimisation.runs import STOP_REASONS, Objective, Outcome, Run, RunGroup, Schedule

__all__ = ["STOP_REASONS", "Objective", "Outcome", "Run", "RunGroup", "Schedule", "optimize"]
