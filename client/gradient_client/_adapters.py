"""What the torch and the JAX adapters share: checking their input names, choosing a request's
dtype, and the error for a third derivative. Imports neither torch nor JAX."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

FLOAT64_NAMES = frozenset({"float64", "torch.float64"})
"""``str`` of a float64 dtype: numpy's (and so JAX's), torch's."""


class ThirdOrderError(RuntimeError):
    """Raised when torch or JAX asks for a third derivative of a remote formula (one class, from
    ``gradient_client.torch`` and ``gradient_client.jax`` alike)."""


def input_names(inputs: str | Sequence[str], constants: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The names of a remote function's inputs: at least one, none twice, none a constant."""
    names = [inputs] if isinstance(inputs, str) else list(inputs)
    if not names:
        raise ValueError("inputs must name at least one input of the formula")
    if len(set(names)) != len(names):
        raise ValueError(f"inputs name an input twice: {names}")
    shared = sorted(set(names) & set(constants or {}))
    if shared:
        raise ValueError(f"{shared} are both inputs and constants")
    return tuple(names)


def has_own_dtype(constant: Any) -> bool:
    """Whether a constant has a dtype of its own (an array, a tensor, a numpy scalar) that takes
    part in choosing the request's: Python numbers and lists have none (as everywhere in the
    client)."""
    return hasattr(constant, "dtype")


def request_dtype(dtypes: Iterable[Any]) -> str:
    """The request's dtype for inputs and constants of these dtypes (numpy's, torch's or JAX's):
    float64 when any is float64, else float32."""
    return "float64" if any(str(dtype) in FLOAT64_NAMES for dtype in dtypes) else "float32"
