"""``FormulaStore``: the saved formulas, opened on first use. Until then nothing touches the
database, nor imports SQLAlchemy (a server process or compute worker that never reads a formula
never pays for it); the database itself is ``_database.Database``."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from service.errors import NotFound
from service.store._types import FormulaInput, SavedFormula

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from service.store._database import Database

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def database_url(database_url: str, data_dir: str) -> str:
    """The URL to open: ``database_url``, or SQLite at ``{data_dir}/gradient.db``. PostgreSQL
    URLs without a driver get psycopg (version 3)."""
    if not database_url:
        return f"sqlite:///{Path(data_dir).absolute() / 'gradient.db'}"
    for scheme in POSTGRES_SCHEMES:
        if database_url.startswith(scheme):
            return "postgresql+psycopg://" + database_url.removeprefix(scheme)
    return database_url


def parse_etags(header: str | None) -> list[str] | None:
    """The entity tags of an If-Match or If-None-Match header, unquoted (weak ones as strong:
    the store's tags are all strong), or ``["*"]``; None when the header is absent or empty."""
    if header is None or not header.strip():
        return None
    tags = []
    for part in header.split(","):
        tag = part.strip().removeprefix("W/").strip('"')
        if tag:
            tags.append(tag)
    return tags


def formula_not_found(name: str) -> NotFound:
    return NotFound(f"No formula is saved as '{name}'; see GET /v1/formulas.", error_type="formula_not_found")


class FormulaStore:
    """Saved formulas at ``url`` (see ``database_url``). Nothing is opened until first used; then
    the schema is migrated to the newest revision. Every method is synchronous and thread-safe:
    call it from a thread, not the event loop. Writes never lose an update (see ``_database``)."""

    def __init__(self, url: str, *, max_formulas: int = 10_000) -> None:
        self.url = url
        self.max_formulas = max_formulas
        self._database: Database | None = None
        self._lock = threading.Lock()

    @property
    def opened(self) -> bool:
        """Whether the database was opened (a store never used has touched none)."""
        return self._database is not None

    @property
    def database(self) -> Database:
        """The database, opened (and migrated) on first use."""
        database = self._database
        if database is None:
            with self._lock:
                if self._database is None:
                    from service.store._database import Database

                    self._database = Database(self.url, max_formulas=self.max_formulas)
                database = self._database
        return database

    @property
    def engine(self) -> Engine:
        return self.database.engine

    def close(self) -> None:
        """Close every pooled connection; a later call opens the store again."""
        with self._lock:
            database, self._database = self._database, None
        if database is not None:
            database.close()

    def get(self, name: str) -> SavedFormula | None:
        """The formula saved as ``name``, or None."""
        return self.database.get(name)

    def list(self) -> list[SavedFormula]:
        """Every saved formula, by name."""
        return self.database.list()

    def count(self) -> int:
        return self.database.count()

    def put(
        self,
        name: str,
        expression: str,
        inputs: Mapping[str, FormulaInput],
        description: str | None = None,
        *,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> tuple[SavedFormula, bool]:
        """Save ``name`` (a new one, or a new version of it) and return it with whether it was
        created. ``if_match`` and ``if_none_match`` are the HTTP headers' values: the write
        happens only if the stored ETag is one of ``if_match`` (``*``: any), and only if none is
        stored under ``if_none_match: *`` (or its ETag is not listed); else PreconditionFailed
        (412). Over ``max_formulas``, LimitExceeded (413). The formula itself is the caller's to
        check; here only its name and input dtypes are."""
        return self.database.put(name, expression, inputs, description, if_match=if_match, if_none_match=if_none_match)

    def delete(self, name: str, *, if_match: str | None = None) -> SavedFormula:
        """Delete ``name`` and return what it was; NotFound if absent, PreconditionFailed if its
        ETag is not one of ``if_match``."""
        return self.database.delete(name, if_match=if_match)
