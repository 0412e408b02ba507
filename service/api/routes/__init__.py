"""One module per endpoint family; ``ROUTERS`` is the whole URL table."""

from service.api.routes import activations, differentiate, losses, meta, optimize, web

ROUTERS = (activations.router, losses.router, differentiate.router, optimize.router, meta.router, web.router)
