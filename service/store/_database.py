"""The saved formulas' database: SQLAlchemy's engine and every statement, safe for several
threads and several processes (server replicas, compute workers) at once. ``FormulaStore`` opens
it on first use (importing SQLAlchemy only then).

Every write is one transaction that reads the row and then writes it only if its version is
still the one read (``UPDATE ... WHERE version = ?``; an INSERT that meets a row another writer
just made fails on the primary key): a writer that loses a race reads again and retries, so no
update is ever lost and versions grow by one per write. SQLite runs in WAL mode with a busy
timeout and takes its write lock when a write transaction begins (``BEGIN IMMEDIATE``), so writers
from several processes queue rather than fail; PostgreSQL serialises inserts (for the count limit)
with a transaction-scoped advisory lock.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, delete, event, func, insert, select, text, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.pool import StaticPool

from service.errors import DatabaseUnavailable, InvalidInput, LimitExceeded, PreconditionFailed
from service.store._models import FORMULAS
from service.store._names import check_name
from service.store._store import formula_not_found, parse_etags
from service.store._types import DTYPES, FormulaInput, SavedFormula

logger = logging.getLogger("service.store")

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_MS = 30_000
"""How long a SQLite writer waits for another process's write lock before giving up."""
ADVISORY_LOCK = 0x6772_6164  # "grad": PostgreSQL's lock for migrations and inserts
MAX_ATTEMPTS = 100


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    """In UTC, whatever the database gave (SQLite gives naive times)."""
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _record(row: Any) -> SavedFormula:
    return SavedFormula(
        name=row.name,
        expression=row.expression,
        inputs={item["name"]: FormulaInput(tuple(item["shape"]), item["dtype"]) for item in row.inputs},
        description=row.description,
        version=row.version,
        etag=row.etag,
        created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at),
    )


def _matches(tags: list[str], etag: str) -> bool:
    return "*" in tags or etag in tags


class Database:
    """The formulas at ``url``: the engine is created, and the schema migrated to the newest
    revision, when this is made. Every method is synchronous and thread-safe."""

    def __init__(self, url: str, *, max_formulas: int) -> None:
        self.max_formulas = max_formulas
        try:
            engine = _create_engine(url)
        except (ArgumentError, ImportError) as exc:  # a misconfiguration: logged, and a 503 for the request
            logger.error("cannot open the formulas' database: %s", exc)
            raise DatabaseUnavailable(
                f"The formulas' database URL cannot be opened ({type(exc).__name__}: {exc}); see GRADIENT_DATABASE_URL."
            ) from exc
        try:
            with _unavailable_as_503():
                migrate(engine)
        except BaseException:
            engine.dispose()
            raise
        self.engine = engine

    def close(self) -> None:
        self.engine.dispose()

    def get(self, name: str) -> SavedFormula | None:
        """The formula saved as ``name``, or None."""
        with self._reading() as conn:
            row = conn.execute(select(FORMULAS).where(FORMULAS.c.name == name)).first()
        return None if row is None else _record(row)

    def list(self) -> list[SavedFormula]:
        """Every saved formula, by name."""
        with self._reading() as conn:
            rows = conn.execute(select(FORMULAS).order_by(FORMULAS.c.name)).all()
        return [_record(row) for row in rows]

    def count(self) -> int:
        with self._reading() as conn:
            return int(conn.execute(select(func.count()).select_from(FORMULAS)).scalar_one())

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
        """See ``FormulaStore.put``."""
        check_name(name)
        for spec in inputs.values():
            if spec.dtype not in DTYPES:
                raise InvalidInput(f"An input's dtype must be one of {', '.join(DTYPES)}.", error_type="invalid_dtype")
        stored_inputs = [{"name": key, "shape": list(spec.shape), "dtype": spec.dtype} for key, spec in inputs.items()]
        match, none_match = parse_etags(if_match), parse_etags(if_none_match)
        for _ in range(MAX_ATTEMPTS):
            try:
                with self._writing() as conn:
                    row = conn.execute(select(FORMULAS).where(FORMULAS.c.name == name)).first()
                    _check_preconditions(name, None if row is None else row.etag, match, none_match)
                    now = _now()
                    values = {"expression": expression, "inputs": stored_inputs, "description": description}
                    if row is None:
                        self._check_room(conn)
                        etag = _new_etag(1)
                        conn.execute(
                            insert(FORMULAS).values(
                                name=name, version=1, etag=etag, created_at=now, updated_at=now, **values
                            )
                        )
                        return SavedFormula(name, expression, dict(inputs), description, 1, etag, now, now), True
                    version = row.version + 1
                    etag = _new_etag(version)
                    result = conn.execute(
                        update(FORMULAS)
                        .where(FORMULAS.c.name == name, FORMULAS.c.version == row.version)
                        .values(version=version, etag=etag, updated_at=now, **values)
                    )
                    if result.rowcount == 1:
                        created = _aware(row.created_at)
                        formula = SavedFormula(name, expression, dict(inputs), description, version, etag, created, now)
                        return formula, False
            except IntegrityError:
                pass  # another writer created it first: read it again
            time.sleep(0.001)
        raise DatabaseUnavailable(f"The formula '{name}' is being written by too many clients at once; try again.")

    def delete(self, name: str, *, if_match: str | None = None) -> SavedFormula:
        """See ``FormulaStore.delete``."""
        match = parse_etags(if_match)
        for _ in range(MAX_ATTEMPTS):
            with self._writing() as conn:
                row = conn.execute(select(FORMULAS).where(FORMULAS.c.name == name)).first()
                if row is None:
                    raise formula_not_found(name)
                _check_preconditions(name, row.etag, match, None)
                result = conn.execute(
                    delete(FORMULAS).where(FORMULAS.c.name == name, FORMULAS.c.version == row.version)
                )
                if result.rowcount == 1:
                    return _record(row)
        raise DatabaseUnavailable(f"The formula '{name}' is being written by too many clients at once; try again.")

    def _check_room(self, conn: Connection) -> None:
        if conn.dialect.name == "postgresql":  # one insert at a time, so that the count holds
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK})
        count = conn.execute(select(func.count()).select_from(FORMULAS)).scalar_one()
        if count >= self.max_formulas:
            raise LimitExceeded(
                f"{count} formulas are saved already, the limit; delete one first.",
                error_type="too_many_formulas",
                limit=self.max_formulas,
            )

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with _unavailable_as_503(), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction (on SQLite, holding the database's write lock from its start)."""
        with _unavailable_as_503(), self.engine.connect() as conn:
            conn.execution_options(write=True)
            with conn.begin():
                yield conn


def _check_preconditions(name: str, etag: str | None, match: list[str] | None, none_match: list[str] | None) -> None:
    if match is not None and (etag is None or not _matches(match, etag)):
        now = "it does not exist" if etag is None else f'its ETag is now "{etag}"'
        raise PreconditionFailed(
            f"If-Match does not match the formula '{name}': {now}. Read it again, then retry.",
            etag=etag,
        )
    if none_match is not None and etag is not None and _matches(none_match, etag):
        raise PreconditionFailed(
            f"If-None-Match: the formula '{name}' exists already (ETag \"{etag}\").", error_type="formula_exists"
        )


def _new_etag(version: int) -> str:
    return f"{version}-{secrets.token_hex(8)}"


@contextmanager
def _unavailable_as_503() -> Iterator[None]:
    """A database that cannot be reached (or stays locked) is a 503, not a 500."""
    try:
        yield
    except IntegrityError:
        raise
    except DBAPIError as exc:
        if not exc.connection_invalidated and not _is_operational(exc):
            raise
        logger.warning("the formulas' database failed: %s", exc.orig)
        raise DatabaseUnavailable(f"The formulas' database is unavailable: {exc.orig}".strip()) from exc


def _is_operational(exc: DBAPIError) -> bool:
    return type(exc).__name__ in {"OperationalError", "InterfaceError"}


def _create_engine(url_text: str) -> Engine:
    url = make_url(url_text)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    return create_engine(url, pool_pre_ping=True)


def _sqlite_engine(url: URL) -> Engine:
    """SQLite in WAL mode (readers never wait for a writer) with a busy timeout, its
    transactions begun by SQLAlchemy itself so that a write takes the lock first."""
    in_memory = url.database in (None, "", ":memory:")
    options: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_MS / 1000}}
    if in_memory:
        options["poolclass"] = StaticPool  # one connection, or each would see its own empty database
    else:
        assert url.database is not None
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **options)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver begins nothing on its own
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision, in one transaction that holds a lock other
    processes starting at the same time wait on (SQLite's write lock, or a PostgreSQL advisory
    lock): the first migrates, the others then find nothing to do."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn:
        conn.execution_options(write=True)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
