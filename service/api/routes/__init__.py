"""One module per endpoint family; ``ROUTERS`` is the whole URL table."""

from service.api.routes import activations, catalogs, differentiate, losses, meta, optimize, web

ROUTERS = (
    activations.router,
    losses.router,
    differentiate.router,
    catalogs.router,
    optimize.router,
    meta.router,
    web.router,
)
