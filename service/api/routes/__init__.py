"""One module per endpoint family; ``ROUTERS`` is the whole URL table."""

from service.api.routes import activations, differentiate, losses, meta

ROUTERS = (activations.router, losses.router, differentiate.router, meta.router)
