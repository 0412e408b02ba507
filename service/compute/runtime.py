"""Devices and the translation of torch's own exceptions into the service's."""

from __future__ import annotations

import dis
import functools
import os
from types import CodeType
from typing import Any

import torch

from service.errors import DeviceUnavailable, InvalidInput, Overloaded


def available_devices() -> list[str]:
    """Devices this process may use, without creating a CUDA context."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    return devices


@functools.cache
def resolve_device(requested: str, preference: str = "auto") -> torch.device:
    """Map a request's ``device`` (auto, cpu, cuda, cuda:N) to a torch device that exists.

    ``auto`` means ``preference`` (the GRADIENT_DEVICE setting), whose own ``auto`` is the first
    GPU if there is one, else the CPU. Raises DeviceUnavailable for a GPU that is not there.
    """
    choice = preference if requested == "auto" else requested
    if choice == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"Device {choice!r} was asked for, but this server has no CUDA device; use 'cpu' or 'auto'.",
            available=available_devices(),
        )
    index = int(choice.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise DeviceUnavailable(
            f"Device {choice!r} was asked for, but this server has {torch.cuda.device_count()} CUDA device(s).",
            available=available_devices(),
        )
    return torch.device("cuda", index)


def out_of_memory(what: str) -> Overloaded:
    """The 503 for torch.OutOfMemoryError, with the allocator's cache emptied for the next request."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return Overloaded(
        f"The device ran out of memory computing {what}; retry later or send less.",
        error_type="device_out_of_memory",
    )


class torch_errors:  # noqa: N801  # used as a context manager, like contextlib's
    """Report torch's complaints about the client's input as 400s, and out-of-memory as a 503.

    Only what torch raises about its arguments is the client's fault: a ``RuntimeError`` (with
    ``NotImplementedError``), ``IndexError`` or ``ValueError`` raised by torch (its C++ core or its
    Python code). Anything else (a ``TypeError``, ``KeyError``, ``AttributeError``, an ``assert``,
    or a ``raise`` in this package's own code) is a bug and goes up unchanged, to be answered as a
    logged 500.

    A class rather than a generator context manager: it wraps every request's computation, and
    entering and leaving a generator costs a small request a few microseconds more."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, traceback: Any) -> None:
        if exc is None:
            return
        what = self.what
        if isinstance(exc, torch.OutOfMemoryError):
            raise out_of_memory(what) from exc
        if not is_torch_refusal(exc):
            return
        if isinstance(exc, RuntimeError) and "allocate" in str(exc) and "memory" in str(exc):
            raise Overloaded(  # the CPU allocator's own out-of-memory error
                f"The server ran out of memory computing {what}; retry later or send less.",
                error_type="out_of_memory",
            ) from exc
        raise InvalidInput(f"{what} failed on this input: {exc}", error_type="computation_failed") from exc


TORCH_REFUSALS = (RuntimeError, IndexError, ValueError)
"""The exception types torch raises about its arguments: c10::Error, IndexError, ValueError, and
NotImplementedError (a RuntimeError) for a dtype a kernel lacks, such as softmax of integers."""
NOT_REFUSALS = (RecursionError,)
"""A RuntimeError that means a fault of ours, never bad input."""
TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
RAISING = frozenset({"RAISE_VARARGS", "RERAISE"})


def is_torch_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is torch refusing its arguments, rather than a fault of this package.

    It is when its type is one torch raises about arguments and it was raised by torch: in
    torch's own Python code, or in its C++ core, called from any frame (the innermost frame's
    instruction is then a call, an operator or a subscript). A ``raise`` statement outside torch
    (ours) is a fault to report as such."""
    if not isinstance(exc, TORCH_REFUSALS) or isinstance(exc, NOT_REFUSALS):
        return False
    innermost = exc.__traceback__
    if innermost is None:  # never raised: nothing says torch's
        return False
    while innermost.tb_next is not None:
        innermost = innermost.tb_next
    code = innermost.tb_frame.f_code
    return code.co_filename.startswith(TORCH_DIR) or _instruction_at(code, innermost.tb_lasti) not in RAISING


@functools.lru_cache(maxsize=1024)
def _instruction_at(code: CodeType, offset: int) -> str:
    return next((i.opname for i in dis.get_instructions(code) if i.offset == offset), "")


def concrete(tensor: torch.Tensor) -> torch.Tensor | None:
    """The values behind ``tensor``, for a check on data: under torch.func transforms (vmap over
    a batch of points, jacrev) the plain tensor holding every point; None on the meta device,
    where there are shapes but no values to check."""
    while torch._C._functorch.is_functorch_wrapped_tensor(tensor):
        tensor = torch._C._functorch.get_unwrapped(tensor)
    return None if tensor.is_meta else tensor


def cuda_broken() -> bool:
    """Whether this process's CUDA context on its current device is unusable (after a
    device-side assert, every later CUDA call fails): a worker process then exits, to be
    replaced. False where CUDA was never initialised here."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):  # type: ignore[no-untyped-call]
        return False
    try:
        torch.cuda.synchronize()
        torch.cuda.current_stream().query()
    except RuntimeError:  # torch.AcceleratorError is one
        return True
    return False
