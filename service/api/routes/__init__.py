"""One module per endpoint family; ``ROUTERS`` is the whole URL table."""

from service.api.routes import activations, losses, meta

ROUTERS = (meta.router, activations.router, losses.router)
