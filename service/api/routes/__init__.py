"""One module per endpoint family; ``ROUTERS`` is the whole URL table."""

from service.api.routes import (
    activations,
    catalogs,
    differentiate,
    formulas,
    losses,
    meta,
    oip,
    optimize,
    tesseract,
    web,
)

ROUTERS = (
    activations.router,
    losses.router,
    differentiate.router,
    formulas.router,
    oip.router,
    tesseract.router,
    catalogs.router,
    optimize.router,
    meta.router,
    web.router,
)
