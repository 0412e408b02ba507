"""When to retry, and how long to wait first: shared by the blocking and the async client."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

import httpx

RETRIED_STATUSES = frozenset({429, 503})
RETRIED_503_TYPES = frozenset({"overloaded"})
"""The 503s worth another try: a full service. A 503 for running out of memory
(``out_of_memory``, ``device_out_of_memory``, also sent with a ``Retry-After``) is raised at
once: the same request would most likely run out again, at the same cost to the service."""

RETRIED_EXCEPTIONS: tuple[type[Exception], ...] = (
    httpx.ConnectError,  # refused, unreachable, DNS
    httpx.ConnectTimeout,
    httpx.ReadError,  # the connection broke
    httpx.WriteError,
    httpx.RemoteProtocolError,  # the server closed a kept-alive connection as it was reused
)
"""Network failures worth another try. A read timeout is not among them: the service may still
be working on the request."""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int
    """Retries after the first attempt (0: none)."""
    backoff_s: float = 0.25
    """The first wait when the service names none; doubled at each retry."""
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0
    """A longer ``Retry-After`` is waited this long."""
    jitter: float = 0.1
    """``Retry-After`` waits are lengthened by up to this fraction, so that clients told the same
    wait do not all come back at once."""

    def wait_after_status(
        self, attempt: int, status: int, retry_after: float | None, error_type: str | None = None
    ) -> float | None:
        """Seconds to wait before retrying an answer of ``status`` whose error body has the type
        ``error_type`` (``None``: no error body), ``attempt`` counting from 0; or None not to
        retry. A 429 is always retried, a 503 only when the service is full (``overloaded``)."""
        if not is_retried(status, error_type) or attempt >= self.retries:
            return None
        if retry_after is not None:
            wait = min(retry_after, self.max_retry_after_s)
            return wait * (1 + self.jitter * random.random())
        return self.backoff(attempt)

    def wait_after_exception(self, attempt: int, exc: Exception) -> float | None:
        if not isinstance(exc, RETRIED_EXCEPTIONS) or attempt >= self.retries:
            return None
        return self.backoff(attempt)

    def backoff(self, attempt: int) -> float:
        """Bounded exponential backoff with jitter: up to ``backoff_s * 2 ** attempt`` (at most
        ``max_backoff_s``), at least half of it."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2.0**attempt)
        return ceiling * (0.5 + 0.5 * random.random())


def is_retried(status: int, error_type: str | None) -> bool:
    """Whether an answer of ``status`` with an error body of type ``error_type`` may be retried."""
    if status not in RETRIED_STATUSES:
        return False
    return status != 503 or error_type in RETRIED_503_TYPES


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds: delta-seconds, or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
