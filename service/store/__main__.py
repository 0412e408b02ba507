"""``python -m service.store upgrade|current|revision``: the saved formulas' database migrations,
at GRADIENT_DATABASE_URL (or SQLite in GRADIENT_DATA_DIR), with Alembic."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from alembic import command
from alembic.config import Config

from service.config import Settings
from service.store._database import MIGRATIONS
from service.store._store import FormulaStore, database_url


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.store", description=__doc__)
    parser.add_argument("action", choices=["upgrade", "current", "revision"], help="what to do")
    parser.add_argument("--url", help="the database's SQLAlchemy URL (default: from the settings)")
    parser.add_argument("-m", "--message", default="new revision", help="a new revision's title")
    args = parser.parse_args(argv)
    settings = Settings()
    url = args.url or database_url(settings.database_url, settings.data_dir)
    if args.action == "upgrade":  # as the service does on first use: under its lock
        store = FormulaStore(url)
        store.engine  # noqa: B018 (opening migrates)
        store.close()
        print(f"{_safe(url)}: at the newest revision", file=sys.stderr)
        return
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if args.action == "current":
        command.current(config, verbose=True)
    else:
        command.revision(config, message=args.message, autogenerate=True)


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    main()
