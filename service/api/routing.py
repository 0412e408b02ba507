"""``RequestRoute``: the route class of the compute endpoints, which read their own bodies."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute, APIRouter


class RequestRoute(APIRoute):
    """An APIRoute whose endpoint takes ``request`` and its path parameters (as strings) and
    returns a Response itself.

    FastAPI still documents it from its signature and ``openapi_extra``. At request time it skips
    dependency solving, which has nothing to do for such an endpoint but costs tens of
    microseconds, a large share of a small request.
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

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            response: Response = await endpoint(request=request, **request.path_params)
            return response

        return handler


Endpoint = Callable[..., Coroutine[Any, Any, Response]]


def compute_post(router: APIRouter, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
    """``@router.post(path, ...)`` for a compute endpoint, registered as a RequestRoute."""

    def register(endpoint: Endpoint) -> Endpoint:
        router.add_api_route(path, endpoint, methods=["POST"], route_class_override=RequestRoute, **options)
        return endpoint

    return register
