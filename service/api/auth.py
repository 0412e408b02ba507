"""Optional API keys: with GRADIENT_API_KEYS set, /v1/* needs ``Authorization: Bearer <key>``."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.responses import dump_json
from service.errors import Unauthorized

PROTECTED_PREFIX = "/v1/"


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


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
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        error = self._check(scope)
        if error is None:
            await self.app(scope, receive, send)
            return
        body = dump_json(error.body())
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(name.lower().encode(), value.encode()) for name, value in error.headers().items()]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _check(self, scope: Scope) -> Unauthorized | None:
        header = next((value for key, value in scope["headers"] if key == b"authorization"), None)
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
