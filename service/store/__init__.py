"""Saved formulas in a database: SQLite by default, any URL SQLAlchemy takes, PostgreSQL for
several replicas. ``FormulaStore`` is the one way in; it opens its engine (and migrates the
schema) on first use, so a process that never asks for a formula never touches the database."""

from service.store._names import NAME_PATTERN, check_name
from service.store._store import FormulaStore, database_url, formula_not_found, parse_etags
from service.store._types import DTYPES, FormulaInput, SavedFormula

__all__ = [
    "DTYPES",
    "NAME_PATTERN",
    "FormulaInput",
    "FormulaStore",
    "SavedFormula",
    "check_name",
    "database_url",
    "formula_not_found",
    "parse_etags",
]
