"""The schema, as SQLAlchemy models (the migrations in ``migrations/`` create it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Table, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class FormulaRow(Base):
    """One saved formula. ``inputs`` is a JSON list of ``{"name", "shape", "dtype"}`` objects, so
    that their order survives every database's JSON type."""

    __tablename__ = "formulas"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    expression: Mapped[str] = mapped_column(Text)
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    version: Mapped[int] = mapped_column(Integer)
    etag: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


FORMULAS: Table = FormulaRow.__table__  # type: ignore[assignment]
