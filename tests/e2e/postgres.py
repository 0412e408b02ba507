"""A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries (``scripts/install-postgres``
installs them), a cluster made by initdb in a temporary directory and started by pg_ctl on a free
port, as a user other than root (PostgreSQL refuses to run as root), stopped and removed after."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.servers import free_port

USER = "gradient"
"""The database superuser the cluster is made with (no password: trust, on 127.0.0.1 only)."""


def binaries() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with initdb and pg_ctl (GRADIENT_PG_BIN names another)."""
    given = os.environ.get("GRADIENT_PG_BIN")
    if given:
        candidates = [Path(given)]
    else:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: _version(path.parent.name))
        candidates = list(reversed(versions))
    for path in candidates:
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    return None


def _version(name: str) -> int:
    return int(name) if name.isdigit() else -1


def _runner() -> tuple[list[str], int | None]:
    """How to run the server's commands: as this user, or, for root, as the ``postgres`` user (which
    Debian's package makes) or else ``nobody``, through runuser; with the uid that must own its files."""
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        try:
            uid = pwd.getpwnam(name).pw_uid
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"], uid
    raise RuntimeError("running as root, and neither a postgres nor a nobody user exists to run PostgreSQL")


@dataclass(frozen=True)
class PostgresServer:
    port: int
    root: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a name the tests choose, never user input
        return self.url(name)


@contextmanager
def postgres_server(bin_dir: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of its own, started, for as long as the context lasts."""
    prefix, owner = _runner()
    root = Path(tempfile.mkdtemp(prefix="gradient-pg-"))  # not under pytest's 0700 root-owned tree
    if owner is not None:
        os.chown(root, owner, -1)
    data, socket_dir, log = root / "data", root / "socket", root / "server.log"

    def run(*command: str) -> None:
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            server_log = log.read_text() if log.exists() else ""
            raise RuntimeError(f"{command[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}{server_log}")

    port = free_port()
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        run("mkdir", "-p", str(socket_dir))
        options = f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        try:
            yield PostgresServer(port, root)
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
