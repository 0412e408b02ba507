"""Saved formulas in real databases, written by two real server processes at once: a PostgreSQL
server this module starts (``scripts/install-postgres`` installs it; without it these tests skip,
but fail in CI) and one SQLite file. No update is lost, versions grow by one per write, and the
count is right; both servers migrate the same fresh database at once without harm."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.store import FormulaInput, FormulaStore, database_url
from tests.e2e.postgres import PostgresServer, binaries, postgres_server
from tests.e2e.serving import running_server

pytestmark = pytest.mark.e2e

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}  # as scripts/install-postgres reads it
WRITERS = 4
"""Client threads per server."""
WRITES = 15
"""Writes per thread to the shared name, and as many to a name of its own."""


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    bin_dir = binaries()
    if bin_dir is None:
        what = "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; run scripts/install-postgres)"
        if IN_CI:
            pytest.fail(f"{what}, and CI={os.environ['CI']}: in CI the PostgreSQL tests must run", pytrace=False)
        pytest.skip(what)
    with postgres_server(bin_dir) as server:
        yield server


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The settings of a fresh database of either kind."""
    if request.param == "sqlite":
        return {"GRADIENT_DATA_DIR": str(tmp_path / "data"), "GRADIENT_DATABASE_URL": ""}
    server: PostgresServer = request.getfixturevalue("postgres")
    return {"GRADIENT_DATABASE_URL": server.create_database(f"t_{uuid.uuid4().hex[:16]}")}


def _body(i: int, description: str | None = None) -> dict[str, Any]:
    return {
        "expression": f"sum(x ** 2) + {i}",
        "inputs": {"x": {"shape": [2], "dtype": "float64"}},
        "description": description,
    }


def test_two_servers_writing_at_once_lose_nothing(database: dict[str, str], tmp_path: Path) -> None:
    with ExitStack() as stack:
        bases = [
            stack.enter_context(
                running_server(tmp_path / f"server{i}.log", GRADIENT_COMPUTE_PROCESSES=str(i), **database)
            )[0]
            for i in range(2)  # one computes in a worker process, the other in its own threads
        ]
        clients = [stack.enter_context(httpx.Client(base_url=base, timeout=60)) for base in bases]
        versions: list[int] = []
        lock = threading.Lock()

        def writer(index: int) -> None:
            client = clients[index % 2]
            for i in range(WRITES):
                shared = client.put("/v1/formulas/shared", json=_body(i))
                own = client.put(f"/v1/formulas/own-{index}", json=_body(i))
                assert shared.status_code in (200, 201) and own.status_code in (200, 201), (shared.text, own.text)
                with lock:
                    versions.append(shared.json()["version"])

        def incrementer(index: int) -> None:
            """Read, add one, write back with If-Match; on 412 read again: a counter no write may lose."""
            client = clients[index % 2]
            for _ in range(WRITES):
                while True:
                    current = client.get("/v1/formulas/counter")
                    assert current.status_code == 200, current.text
                    count = int(current.json()["description"]) + 1
                    answer = client.put(
                        "/v1/formulas/counter",
                        json=_body(count, str(count)),
                        headers={"if-match": current.headers["etag"]},
                    )
                    if answer.status_code == 200:
                        break
                    assert answer.status_code == 412, answer.text

        created = clients[0].put("/v1/formulas/counter", json=_body(0, "0"), headers={"if-none-match": "*"})
        assert created.status_code == 201, created.text
        with ThreadPoolExecutor(4 * WRITERS) as pool:
            futures = [pool.submit(writer, index) for index in range(2 * WRITERS)]
            futures += [pool.submit(incrementer, index) for index in range(2 * WRITERS)]
            for future in futures:
                future.result()

        total = 2 * WRITERS * WRITES
        assert sorted(versions) == list(range(1, total + 1))  # every write had a version of its own
        for client in clients:
            assert client.get("/v1/formulas/shared").json()["version"] == total
            counter = client.get("/v1/formulas/counter").json()
            assert counter["description"] == str(total) and counter["version"] == total + 1
            names = [item["name"] for item in client.get("/v1/formulas").json()["formulas"]]
            assert sorted(names) == sorted(["counter", "shared", *(f"own-{i}" for i in range(2 * WRITERS))])
            own = client.get("/v1/formulas/own-3").json()
            assert own["version"] == WRITES and own["expression"].endswith(f"+ {WRITES - 1}")
            # Saved through one server, computed by the other (in a worker process, or in threads).
            answer = client.post("/v1/formulas/counter/differentiate", json={"inputs": {"x": [1.0, 2.0]}})
            assert answer.status_code == 200, answer.text
            assert answer.json()["value"] == 5.0 + total and answer.json()["grad"] == {"x": [2.0, 4.0]}


def test_processes_migrating_at_once(database: dict[str, str]) -> None:
    """Several processes open the same fresh database together: each finds the schema at its newest
    revision (one made it while the others waited on its lock), and each can write."""
    env = {**os.environ, **database}
    script = (
        "from service.store import FormulaStore, FormulaInput, database_url\n"
        "from service.config import Settings\n"
        "import sys\n"
        "s = Settings()\n"
        "store = FormulaStore(database_url(s.database_url, s.data_dir))\n"
        "store.put('p' + sys.argv[1], 'sum(x)', {'x': FormulaInput((1,), 'float32')})\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(i)], env=env, stderr=subprocess.PIPE) for i in range(4)
    ]
    for process in processes:
        _, errors = process.communicate(timeout=120)
        assert process.returncode == 0, errors.decode()
    store = FormulaStore(database_url(database.get("GRADIENT_DATABASE_URL", ""), database.get("GRADIENT_DATA_DIR", "")))
    assert [formula.name for formula in store.list()] == ["p0", "p1", "p2", "p3"]
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == ["0001"]
    store.close()


def test_postgres_keeps_input_order_and_times(postgres: PostgresServer) -> None:
    store = FormulaStore(database_url(postgres.create_database("order_and_times"), ""))
    inputs = {name: FormulaInput((2, 1), "float32") for name in ("zeta", "alpha", "mid")}
    saved, created = store.put("f", "zeta + alpha + mid", inputs, "d")
    read = store.get("f")
    assert created and read == saved and list(read.inputs) == ["zeta", "alpha", "mid"]
    assert read.created_at.utcoffset() is not None and read.created_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    store.close()
