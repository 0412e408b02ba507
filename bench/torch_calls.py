"""What one torch call costs a small request: in a tight loop, and with HTTP code run in between.

Run: .venv/bin/python -m bench.torch_calls [--calls N] [--rounds R]
Times each torch call a small sigmoid request makes (8 float32 elements), first back to back,
then with one request to the FastAPI echo baseline (``bench.baseline_app``, driven in-process
through ASGI) run before each call, as a server runs HTTP code between requests. Prints the best
round's mean microseconds per call for both, and their ratio. One thread, like the small-request
benchmark's server.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import numpy as np
import torch
from starlette.types import Message

from bench.baseline_app import app as echo_app

BODY = b'{"input":[0.1,-0.2,0.3,-0.4,0.5,-0.6,0.7,-0.8]}'
VALUES = [0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8]


async def echo_request() -> None:
    """One POST /echo through the baseline app, in-process."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/echo",
        "raw_path": b"/echo",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    messages = [{"type": "http.request", "body": BODY, "more_body": False}]

    async def receive() -> Message:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        return None

    await echo_app(scope, receive, send)


def calls() -> dict[str, Callable[[], object]]:
    """The torch calls of a small sigmoid request, on tensors like its own."""
    x = torch.tensor(VALUES)
    y = torch.sigmoid(x)
    ones = torch.ones_like(y)
    return {
        "tensor from numpy": lambda: torch.from_numpy(np.array(VALUES, dtype=np.float32)),
        "torch.sigmoid": lambda: torch.sigmoid(x),
        "torch.ones_like": lambda: torch.ones_like(y),
        "aten.sigmoid_backward": lambda: torch.ops.aten.sigmoid_backward(ones, y),
        "Tensor.numpy": lambda: y.numpy(),
        "(no call)": lambda: None,
    }


async def measure(call: Callable[[], object], count: int, between: bool) -> float:
    """Mean microseconds of ``call``, timed alone; with ``between``, an echo request runs first."""
    total = 0.0
    for _ in range(count):
        if between:
            await echo_request()
        started = time.perf_counter()
        call()
        total += time.perf_counter() - started
    return total / count * 1e6


async def run(count: int, rounds: int) -> None:
    for _ in range(200):
        await echo_request()
    print(f"best of {rounds} rounds of {count} calls; microseconds per call")
    print(f"{'call':24s} {'in a loop':>10s} {'after HTTP':>11s} {'ratio':>6s}")
    for name, call in calls().items():
        warm = min([await measure(call, count, between=False) for _ in range(rounds)])
        cold = min([await measure(call, count, between=True) for _ in range(rounds)])
        ratio = f"{cold / warm:5.1f}x" if name != "(no call)" else ""
        print(f"{name:24s} {warm:10.2f} {cold:11.2f} {ratio:>6s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    asyncio.run(run(args.calls, args.rounds))


if __name__ == "__main__":
    main()
