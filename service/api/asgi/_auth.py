"""Optional API keys: with GRADIENT_API_KEYS set, /v1/*, /v2/* (but the Open Inference
Protocol's health probes) and /tesseract/* need ``Authorization: Bearer <key>`` (or HTTP Basic
with the key as the password, for clients that take only a URL)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.asgi._headers import raw_header
from service.api.responses import send_error
from service.errors import Unauthorized

PROTECTED_PREFIXES = ("/v1/", "/v2/", "/tesseract/")
OPEN_PREFIXES = ("/v2/health/",)
"""Probes under a protected prefix, open as /healthz and /readyz are (Kubernetes sends no key)."""


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def _route_path(scope: Scope) -> str:
    """The path the router matches: the root path a proxy or a parent app put in front (which
    uvicorn's --root-path and mounting prepend to ``path``) taken off."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIXES) and not path.startswith(OPEN_PREFIXES)


def _basic_password(credentials: bytes) -> bytes:
    """The password of HTTP Basic ``credentials`` (base64 of ``user:password``); empty if malformed."""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
    except binascii.Error:
        return b""
    return decoded.partition(b":")[2]


class ApiKeyMiddleware:
    """401 with the contract's error body (the protocol's under /v2) for a protected request
    without a configured key.

    Keys are compared as SHA-256 digests with ``hmac.compare_digest``, against every configured
    key, so neither the length nor the position of a mismatch shows in the timing. Probes, the
    metrics, the docs and the playground page stay open.
    """

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self.digests = [_digest(key.encode()) for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _protected(_route_path(scope) + "/"):
            await self.app(scope, receive, send)
            return
        error = self._check(scope)
        if error is None:
            await self.app(scope, receive, send)
            return
        await send_error(send, 401, error, scope=scope)

    def _check(self, scope: Scope) -> Unauthorized | None:
        header = raw_header(scope, b"authorization")
        if header is None:
            return Unauthorized("This server needs an API key: send the header Authorization: Bearer <key>.")
        scheme, _, token = header.partition(b" ")
        scheme = scheme.lower()
        if scheme == b"basic":  # the key as the password: what a client given only a URL (user:key@host) sends
            token = _basic_password(token)
        if scheme not in (b"bearer", b"basic") or not token.strip():
            return Unauthorized("Send the API key as Authorization: Bearer <key>.")
        presented = _digest(token.strip())
        matched = False
        for digest in self.digests:  # no early exit: every key is compared
            matched |= hmac.compare_digest(presented, digest)
        return None if matched else Unauthorized("The API key is not valid.")
