"""Audit fixtures: records to store, a SQLite URL in tmp_path, and a real PostgreSQL server on loopback.

The PostgreSQL server is Debian's (``apt-get install postgresql``), run by the session as an unprivileged user
(initdb refuses root) from a temporary data folder, listening on 127.0.0.1 and a Unix socket in that folder
only. Without the binaries the PostgreSQL tests skip, or fail when ``SBNN_CI=1`` (CI must run them);
``SBNN_PG_BIN`` names another bin folder.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.audit.record import AuditRecord

PG_BIN_DIRS = [Path("/usr/lib/postgresql") / v / "bin" for v in ("17", "16", "15", "14")]
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def make_record(i: int = 0, **changes: object) -> AuditRecord:
    """The i-th of a stream of records one minute apart, alternating models; ``changes`` override fields."""
    values: dict[str, object] = {
        "time": T0 + timedelta(minutes=i),
        "request_id": f"req-{i:04d}",
        "key_id": "key-1" if i % 2 else None,
        "route": "/v1/models/{name}/predict",
        "surface": "v1",
        "model": "alpha" if i % 2 == 0 else "beta",
        "model_version": "1",
        "model_sha256": "ab" * 32,
        "rows": 3,
        "samples": 64,
        "seed": i if i % 3 else None,
        "sampler": None,
        "accept": 3 - i % 3,
        "refer": i % 3,
        "reject": 0,
        "reasons": {"density": i % 3} if i % 3 else {},
        "latency_seconds": 0.01 * (i + 1),
        "status": "200",
    }
    values.update(changes)
    return AuditRecord(**values)  # type: ignore[arg-type]


@pytest.fixture
def record() -> Callable[..., AuditRecord]:
    return make_record


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'audit' / 'audit.db'}"


def _pg_bin() -> Path | None:
    """Debian's newest server binaries, or ``SBNN_PG_BIN`` (another install, or a missing one in a test)."""
    if os.environ.get("SBNN_PG_BIN"):
        dirs = [Path(os.environ["SBNN_PG_BIN"])]
        return next((d for d in dirs if (d / "initdb").is_file() and (d / "pg_ctl").is_file()), None)
    return next((d for d in PG_BIN_DIRS if (d / "initdb").is_file() and (d / "pg_ctl").is_file()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user(user: str | None) -> list[str]:
    """The command prefix that runs as ``user`` (None: as ourselves, already unprivileged)."""
    return [] if user is None else ["runuser", "-u", user, "--"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for the session; yields the base URL ``postgresql+psycopg://postgres@127.0.0.1:PORT``."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        message = "PostgreSQL server binaries not found (Debian/Ubuntu: apt-get install postgresql)"
        if os.environ.get("SBNN_CI") == "1":
            pytest.fail(message + "; SBNN_CI=1 requires them")
        pytest.skip(message)
    user = None
    if os.geteuid() == 0:
        user = "nobody"
        pwd.getpwnam(user)  # KeyError here says which user is missing
    root = Path(tempfile.mkdtemp(prefix="sbnn-pg-"))
    data = root / "data"
    data.mkdir()
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chown(data, entry.pw_uid, entry.pw_gid)
    root.chmod(0o755)
    data.chmod(0o700)
    port = _free_port()
    run = _as_user(user)
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    subprocess.run(
        [*run, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        env=env,
        cwd=root,
    )
    options = f"-k {data} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
    started = subprocess.run(
        [*run, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(data / "server.log"), "-w", "start"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
    )
    if started.returncode != 0:
        server_log = (data / "server.log").read_text() if (data / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed: {started.stdout}{started.stderr}{server_log}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*run, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            env=env,
            cwd=root,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_database(postgres_server: str) -> Iterator[str]:
    """One database for the session's tests (each test gets a schema of its own: far cheaper than a database)."""
    import sqlalchemy as sa

    admin = sa.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql("CREATE DATABASE audit_tests")
    admin.dispose()
    yield f"{postgres_server}/audit_tests"


@pytest.fixture
def postgres_url(postgres_database: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty schema for one test (the URL sets ``search_path`` to it), dropped afterwards."""
    import sqlalchemy as sa

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:55]
    admin = sa.create_engine(postgres_database, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    try:
        yield f"{postgres_database}?options=-csearch_path%3D{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def audit_url(request: pytest.FixtureRequest) -> str:
    """Each backend in turn: the store's tests run on both."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return request.getfixturevalue(fixture)
