"""Process lifecycle shared by the server and the app: whether a shutdown has begun."""

from __future__ import annotations

import threading

draining = threading.Event()
"""Set when the process got SIGTERM (or SIGINT): /readyz answers 503 from then on."""
