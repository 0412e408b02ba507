"""GET /v1/objectives and GET /v1/optimizers: the optimisation catalogs."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.openapi import AUTH_RESPONSES
from service.api.schemas import (
    KnownMinimum,
    ObjectiveCatalog,
    ObjectiveInfo,
    OptimizerCatalog,
    OptimizerInfo,
    params_schema,
)
from service.compute.optimisation.objectives import OBJECTIVES
from service.compute.optimisation.optimizers import OPTIMIZERS

router = APIRouter(tags=["optimisation"])


@router.get(
    "/v1/objectives", summary="Test functions: formulas, dimensions, domains and known minima", responses=AUTH_RESPONSES
)
def list_objectives() -> ObjectiveCatalog:
    return ObjectiveCatalog(
        objectives=[
            ObjectiveInfo(
                name=objective.name,
                formula=objective.formula,
                dimension=objective.dimension,
                domain=[list(box) for box in objective.box(objective.dimension or 2)],
                minima=[KnownMinimum(x=x, value=value) for x, value in objective.minima(objective.dimension or 2)],
            )
            for objective in OBJECTIVES
        ]
    )


@router.get(
    "/v1/optimizers",
    summary="torch.optim optimizers and the JSON schema of their hyper-parameters",
    responses=AUTH_RESPONSES,
)
def list_optimizers() -> OptimizerCatalog:
    return OptimizerCatalog(
        optimizers=[OptimizerInfo(name=spec.name, doc=spec.doc, params=params_schema(spec)) for spec in OPTIMIZERS]
    )
