"""Optional API keys: with GRADIENT_API_KEYS set, /v1/* needs ``Authorization: Bearer <key>``."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.asgi._headers import raw_header
from service.api.responses import send_error
from service.errors import Unauthorized

PROTECTED_PREFIX = "/v1/"


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def _route_path(scope: Scope) -> str:
    """The path the router matches: the root path a proxy or a parent app put in front (which
    uvicorn's --root-path and mounting prepend to ``path``) taken off."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class ApiKeyMiddleware:
    """401 with the contract's error body for a /v1/ request without a configured key.

    Keys are compared as SHA-256 digests with ``hmac.compare_digest``, against every configured
    key, so neither the length nor the position of a mismatch shows in the timing. Probes, the
    metrics, the docs and the playground page stay open.
    """

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self.digests = [_digest(key.encode()) for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (_route_path(scope) + "/").startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        error = self._check(scope)
        if error is None:
            await self.app(scope, receive, send)
            return
        await send_error(send, 401, error)

    def _check(self, scope: Scope) -> Unauthorized | None:
        header = raw_header(scope, b"authorization")
        if header is None:
            return Unauthorized("This server needs an API key: send the header Authorization: Bearer <key>.")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return Unauthorized("Send the API key as Authorization: Bearer <key>.")
        presented = _digest(token.strip())
        matched = False
        for digest in self.digests:  # no early exit: every key is compared
            matched |= hmac.compare_digest(presented, digest)
        return None if matched else Unauthorized("The API key is not valid.")
