"""Pure ASGI middleware: the request body cap, enforced before anything reads the body, and
gzip for the clients that ask for it."""

from __future__ import annotations

from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.asgi._lane import StartTrackingSend
from service.api.errors import ServiceHTTPError
from service.api.responses import send_error
from service.errors import LimitExceeded


class BodyTooLarge(ServiceHTTPError):
    """Raised from ``receive`` mid-stream; an HTTPException, so FastAPI's body reader lets it
    through to the error handlers, and caught here for anything that reads bodies otherwise."""

    def __init__(self, limit: int) -> None:
        super().__init__(body_too_large(limit))


def body_too_large(limit: int) -> LimitExceeded:
    return LimitExceeded(
        f"The request body is over the limit of {limit} bytes.", error_type="body_too_large", limit=limit
    )


class BodyLimitMiddleware:
    """413 for a body over ``limit`` bytes, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: int | None = None
        chunked = False
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit():
                length = int(value)
            elif key == b"transfer-encoding":
                chunked = True
        if length is not None and length > self.limit:
            await self._reject(scope, send)
            return
        if length is not None and not chunked:  # the server delivers no more than Content-Length
            await self.app(scope, receive, send)
            return
        received = 0
        tracking_send = StartTrackingSend(send)

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not tracking_send.started:
                await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        await send_error(send, 413, body_too_large(self.limit), (b"connection", b"close"), scope=scope)


GZIP_LEVEL = 1
"""Fastest. On 28 MB of JSON numbers, level 1 took 0.39 s and came out 7% larger than
Starlette's default level 9, which took 4.4 s."""


class GZipIfAccepted(GZipMiddleware):
    """Starlette's gzip, entered only by requests that accept gzip: the others skip its
    per-message header parsing, a real share of a small request's cost."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(
            key == b"accept-encoding" and b"gzip" in value for key, value in scope["headers"]
        ):
            await super().__call__(scope, receive, send)
        else:
            await self.app(scope, receive, send)
