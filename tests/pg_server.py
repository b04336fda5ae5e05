"""A throwaway PostgreSQL server on a Unix socket, for tests/test_grid_postgres.py and benchmarks/study_scale.py.

The server binaries come from ``$MEDHUB_PG_BIN`` (default ``/usr/local/bin``); PostgreSQL refuses to run as root,
so as root its tools run as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

PG_BIN = Path(os.environ.get("MEDHUB_PG_BIN", "/usr/local/bin"))


def postgres_available() -> bool:
    """True when the server binaries and the psycopg driver are installed."""
    return (PG_BIN / "pg_ctl").exists() and (PG_BIN / "initdb").exists() and bool(importlib.util.find_spec("psycopg"))


def _as_server_user(cmd: str) -> list[str]:
    return ["su", "postgres", "-c", cmd] if os.geteuid() == 0 else ["sh", "-c", cmd]


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start a fresh server (trust auth, no TCP) and yield its SQLAlchemy URL; stop and delete it after."""
    root = Path(tempfile.mkdtemp(prefix="medhub-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = root / "data", 54000 + os.getpid() % 1000
    subprocess.run(_as_server_user(f"{PG_BIN}/initdb -D {data} -A trust -U medhub"), check=True, capture_output=True)
    start = f"{PG_BIN}/pg_ctl -D {data} -o '-k {root} -p {port} -c listen_addresses=' -l {root}/log -w start"
    subprocess.run(_as_server_user(start), check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://medhub@/postgres?host={root}&port={port}"
    finally:
        subprocess.run(_as_server_user(f"{PG_BIN}/pg_ctl -D {data} -m fast stop"), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
