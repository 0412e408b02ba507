"""The store's public records: plain frozen dataclasses, free of SQLAlchemy."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

DTYPES = ("float32", "float64")
"""The dtypes a formula input may declare."""


@dataclass(frozen=True)
class FormulaInput:
    """One declared input of a saved formula."""

    shape: tuple[int, ...]
    dtype: str
    """"float32" or "float64"."""

    def public(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class SavedFormula:
    """A formula as stored: ``version`` counts its writes (1 when created), ``etag`` is an opaque
    token that changes with every write (quoted, it is the HTTP ETag)."""

    name: str
    expression: str
    inputs: dict[str, FormulaInput]
    """In declaration order."""
    description: str | None
    version: int
    etag: str
    created_at: datetime
    updated_at: datetime

    @property
    def dtype(self) -> str:
        """The dtype it computes in: float64 if any input is, else float32."""
        return "float64" if any(spec.dtype == "float64" for spec in self.inputs.values()) else "float32"

    def public(self) -> dict[str, Any]:
        """The formula as the API shows it."""
        return {
            "name": self.name,
            "expression": self.expression,
            "inputs": {name: spec.public() for name, spec in self.inputs.items()},
            "description": self.description,
            "version": self.version,
            "etag": self.etag,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }
