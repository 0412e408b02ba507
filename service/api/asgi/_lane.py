"""``ComputeLane``, the innermost middleware, which serves the compute routes without the
framework's inner layers."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import Request, Response
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from service.api.endpoints import RequestRoute

ExceptionHandler = Callable[[Request, Any], Response | Awaitable[Response]]
"""What ``app.exception_handlers`` holds for HTTP requests."""


class StartTrackingSend:
    """A ``send`` that remembers whether the response has started, after which an error can no
    longer be answered with a response of its own."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)


class ComputeLane:
    """The innermost middleware: a request that fully matches one of ``routes`` is served here,
    its exceptions answered by ``handlers`` (the app's, looked up as Starlette looks them up: an
    HTTPException's status first, then the exception's classes).

    Everything else goes on to ``app``: Starlette's exception middleware, FastAPI's exit stack,
    the router and its route, four layers with nothing to do for a compute route that together
    cost a small request about a tenth of its time. A method a route does not take (a partial
    match) goes on too, for the router's 405. ``routes`` are matched before any other route, as
    the app also lists them first.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[RequestRoute], handlers: Mapping[Any, ExceptionHandler]) -> None:
        self.app = app
        self.routes = tuple(routes)
        # As in Starlette, the catch-all is not among them: unexpected errors go up, to the
        # middleware that answers them with a logged 500.
        self.class_handlers = {
            key: value for key, value in handlers.items() if isinstance(key, type) and key is not Exception
        }
        self.status_handlers = {key: value for key, value in handlers.items() if isinstance(key, int) and key != 500}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await self._serve(route, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, route: RequestRoute, scope: Scope, receive: Receive, send: Send) -> None:
        tracking_send = StartTrackingSend(send)
        try:
            await route.serve(scope, receive, tracking_send)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None or tracking_send.started:  # nothing to answer with: the outer layers see it
                raise
            answer = handler(Request(scope, receive), exc)
            response = await answer if inspect.isawaitable(answer) else answer
            await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> ExceptionHandler | None:
        """The handler Starlette's ``wrap_app_handling_exceptions`` would pick: the status handler
        of an HTTPException, else the first of the exception's classes with a handler (the loop
        of ``starlette._exception_handler._lookup_exception_handler``, private to Starlette)."""
        if isinstance(exc, HTTPException) and exc.status_code in self.status_handlers:
            return self.status_handlers[exc.status_code]
        for cls in type(exc).__mro__:
            if cls in self.class_handlers:
                return self.class_handlers[cls]
        return None
