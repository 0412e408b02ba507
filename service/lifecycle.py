"""Process lifecycle: draining on SIGTERM before the server's own graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

logger = logging.getLogger("service.lifecycle")

draining = threading.Event()
"""Set once the process got SIGTERM or SIGINT: /readyz answers 503 from then on."""


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL this process when the thread that started it exits (Linux only; a compute worker
    elsewhere stops at its channel's end of file, once the computation in hand is done)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def readiness(app: Any) -> str:
    """What /readyz (and the protocol's readiness) says: "draining" once SIGTERM came, else the
    app's own "starting" or "ready"."""
    return "draining" if draining.is_set() else str(app.readiness)


def install_drain_handler(drain_s: float) -> None:
    """Put a handler in front of the server's SIGTERM/SIGINT handler: mark the process as
    draining at once (so /readyz turns 503 while the listener still accepts, and load balancers
    stop sending), and hand the signal on to the server's graceful shutdown ``drain_s`` later.

    Call from the event loop's thread, after the server installed its handlers (the app's
    lifespan startup); elsewhere (a test client's thread) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def on_signal(number: int, frame: FrameType | None, previous: Any = previous) -> None:
            again = draining.is_set()
            draining.set()
            if again or drain_s <= 0:  # a second signal goes straight through
                previous(number, frame)
                return
            logger.info("draining: /readyz answers 503 for %.1f s before the shutdown begins", drain_s)
            loop.call_soon_threadsafe(loop.call_later, drain_s, previous, number, None)

        signal.signal(sig, on_signal)


def lower_priority(increment: int) -> None:
    """Raise this thread's niceness by ``increment`` (on Linux, the event loop's thread and the
    threads it starts later), so that under overload the compute workers, forked before, run
    first. An unprivileged process cannot take it back."""
    try:
        os.nice(increment)
    except OSError as exc:  # not permitted here: run as it is
        logger.warning("could not lower the server's priority: %s", exc)
