"""``RequestRoute``, the route class of the compute endpoints, which read their own bodies (the
ASGI layer's ``ComputeLane`` serves them without the framework's inner layers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from service.api.endpoints._dispatch import Forward


class RequestRoute(APIRoute):
    """An APIRoute whose endpoint takes ``request`` and its path parameters (as strings) and
    returns a Response itself.

    FastAPI still documents it from its signature and ``openapi_extra``. At request time it is
    served by ``serve``: no dependency solving and no exit stacks, which have nothing to do for
    such an endpoint but cost tens of microseconds, a large share of a small request. Exceptions
    go up to the app's handlers, through ``ComputeLane`` or Starlette's exception middleware. An
    endpoint that raises ``Forward`` has its request served by the app's worker pool instead.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        dependant = self.dependant
        others = [
            *dependant.query_params,
            *dependant.header_params,
            *dependant.cookie_params,
            *dependant.body_params,
            *dependant.dependencies,
        ]
        if others or dependant.request_param_name != "request":
            raise TypeError(f"{endpoint.__name__}: a RequestRoute endpoint takes only `request` and path parameters")
        self.app = self.serve

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response: Response = await self.endpoint(request=Request(scope, receive, send), **scope["path_params"])
        except Forward as forward:  # the whole request goes to a worker process
            await scope["app"].compute_pool.forward(scope, receive, send, forward.body)
            return
        await response(scope, receive, send)
