"""The results database: one row per grid cell, with its status, timings and full report.

SQLite by default (one file; WAL journal and a busy timeout, so several writers can share it), or any
SQLAlchemy URL (``postgresql+psycopg://user@host/db``) for a lab-wide store. A cell moves
``pending -> running -> done | failed``; a cell is claimed atomically before it runs, and a stored result is
never overwritten, so no cell runs twice once it is done.

>>> store = ResultStore("sqlite:///:memory:")
>>> store.counts()
{}
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    cast,
    create_engine,
    event,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from medhub.errors import UsageError

log = logging.getLogger(__name__)

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STALE_AFTER_S = 180.0  # a running cell whose owner sent no heartbeat for this long is abandoned
BUSY_TIMEOUT_MS = 60_000

_metadata = MetaData()
cells_table = Table(
    "medhub_grid_cells",
    _metadata,
    Column("key", String(512), primary_key=True),
    Column("model", String(200), nullable=False, index=True),
    Column("task", String(100), nullable=False, index=True),
    Column("label_fraction", Float, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("settings", Text, nullable=False, default="{}"),
    Column("status", String(16), nullable=False, index=True, default=PENDING),
    Column("attempts", Integer, nullable=False, default=0),
    Column("owner", String(200)),
    Column("heartbeat", Float),
    Column("created_at", Float),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("seconds", Float),
    Column("metric_name", String(32)),
    Column("metric", Float),
    Column("error", Text),
    Column("report", Text),
)


def this_owner() -> str:
    """``host:pid`` of this process: who holds a running cell."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_is_gone(owner: str | None) -> bool:
    """True when ``owner`` is a process on this host that no longer exists."""
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for ``url``; a bare path means a SQLite file. SQLite gets WAL and a busy timeout.

    With ``create=False`` a missing SQLite file is an error, and nothing is created on disk.
    """
    if "://" not in url:
        url = f"sqlite:///{Path(url).expanduser().resolve()}"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError(
            f"'{url}' is not a database URL; use sqlite:///path/results.db or postgresql://..."
        ) from None
    if parsed.get_backend_name() != "sqlite":
        try:
            return create_engine(url, pool_pre_ping=True, future=True)
        except (ImportError, NoSuchModuleError) as exc:
            raise UsageError(
                f"no database driver for {parsed.drivername} ({exc}); for PostgreSQL: pip install 'medhub[postgres]' "
                "and use postgresql+psycopg://user@host/db"
            ) from None
    if parsed.database and parsed.database != ":memory:":
        database = Path(parsed.database).expanduser()
        if not create and not database.is_file():
            raise UsageError(f"{url}: no such results database; run 'medhub benchmark --results {url}' first")
        if create:
            database.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}, future=True)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class ResultStore:
    """Cells and their results in a SQLAlchemy database (created on first use).

    Args:
        url: a SQLAlchemy URL (``sqlite:///results.db``, ``postgresql://...``) or a path to a SQLite file.
        create: create the table when missing (``False`` for read-only use such as ``medhub results``).
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url, create=create)
        try:
            if create:
                _metadata.create_all(self.engine)
            elif not inspect(self.engine).has_table(cells_table.name):
                raise UsageError(
                    f"{url} holds no benchmark results; run 'medhub benchmark --results {url}' first"
                )
        except OperationalError as exc:
            raise UsageError(
                f"cannot open results database {url}: {exc.orig}; check the URL and permissions"
            ) from None

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    # ---- writing -------------------------------------------------------------------------------------
    def add_cells(self, cells: Iterable) -> int:
        """Insert cells that are not stored yet as ``pending``; returns how many were new."""
        now = time.time()
        cells = list(cells)
        with self.engine.begin() as conn:
            known = set(conn.scalars(select(cells_table.c.key)))
            rows = [
                {
                    "key": c.key,
                    "model": c.model,
                    "task": c.task,
                    "label_fraction": c.label_fraction,
                    "seed": c.seed,
                    "settings": json.dumps(c.settings, sort_keys=True),
                    "status": PENDING,
                    "attempts": 0,
                    "created_at": now,
                }
                for c in cells
                if c.key not in known
            ]
            if rows:
                conn.execute(cells_table.insert(), rows)
        return len(rows)

    def release_stale(self) -> int:
        """Mark running cells whose owner died (or stopped its heartbeat) as failed; returns how many."""
        cutoff = time.time() - STALE_AFTER_S
        with self.engine.begin() as conn:
            running = conn.execute(
                select(cells_table.c.key, cells_table.c.owner, cells_table.c.heartbeat).where(
                    cells_table.c.status == RUNNING
                )
            ).all()
            stale = [r.key for r in running if _owner_is_gone(r.owner) or (r.heartbeat or 0) < cutoff]
            for key in stale:
                conn.execute(
                    update(cells_table)
                    .where(cells_table.c.key == key, cells_table.c.status == RUNNING)
                    .values(status=FAILED, error="interrupted: the process running this cell is gone")
                )
        return len(stale)

    def claim(self, key: str, owner: str | None = None) -> bool:
        """Atomically mark a pending or failed cell as running by ``owner``; False if someone else has it."""
        now = time.time()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(cells_table)
                .where(cells_table.c.key == key, cells_table.c.status.in_([PENDING, FAILED]))
                .values(
                    status=RUNNING,
                    owner=owner or this_owner(),
                    heartbeat=now,
                    started_at=now,
                    attempts=cells_table.c.attempts + 1,
                    error=None,
                )
            )
        return result.rowcount == 1

    def release_owner(self, owner: str | None = None, error: str = "interrupted") -> int:
        """Mark every cell this owner still has running as failed (after an interruption)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(cells_table)
                .where(cells_table.c.owner == (owner or this_owner()), cells_table.c.status == RUNNING)
                .values(status=FAILED, error=error, finished_at=time.time())
            )
        return result.rowcount

    def heartbeat(self, owner: str | None = None) -> None:
        """Refresh the heartbeat of every cell this owner is running."""
        with self.engine.begin() as conn:
            conn.execute(
                update(cells_table)
                .where(cells_table.c.owner == (owner or this_owner()), cells_table.c.status == RUNNING)
                .values(heartbeat=time.time())
            )

    def mark_done(self, key: str, report: dict, *, seconds: float | None = None) -> bool:
        """Store a cell's report; a cell that already has a result keeps it (returns False)."""
        runs = report.get("runs") or [{}]
        metric = runs[0].get("metric", report.get("mean"))
        with self.engine.begin() as conn:
            result = conn.execute(
                update(cells_table)
                .where(cells_table.c.key == key, cells_table.c.status != DONE)
                .values(
                    status=DONE,
                    report=json.dumps(report, default=str),
                    metric_name=str(report.get("metric", "")),
                    metric=None if metric is None else float(metric),
                    seconds=seconds if seconds is not None else runs[0].get("seconds"),
                    finished_at=time.time(),
                    error=None,
                )
            )
        if result.rowcount != 1:
            log.warning("cell %s already has a stored result; the new one is dropped", key)
        return result.rowcount == 1

    def mark_failed(self, key: str, error: str) -> None:
        """Record a failure (the cell is picked again by ``--resume``)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(cells_table)
                .where(cells_table.c.key == key, cells_table.c.status != DONE)
                .values(status=FAILED, error=error[-4000:], finished_at=time.time())
            )

    # ---- reading -------------------------------------------------------------------------------------
    def statuses(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        """``{key: status}`` for the given keys (all cells when None)."""
        query = select(cells_table.c.key, cells_table.c.status)
        with self.engine.connect() as conn:
            found = dict(conn.execute(query).all())
        if keys is None:
            return found
        return {k: found[k] for k in keys if k in found}

    def counts(self, keys: Iterable[str] | None = None) -> dict[str, int]:
        """How many cells are in each status."""
        out: dict[str, int] = {}
        for status in self.statuses(keys).values():
            out[status] = out.get(status, 0) + 1
        return out

    def rows(
        self,
        *,
        status: str | None = None,
        task: str | None = None,
        model: str | None = None,
        report_keys: Sequence[str] | None = None,
    ) -> list[dict]:
        """Stored cells as dicts (``settings`` and ``report`` decoded).

        Args:
            status, task, model: filters.
            report_keys: top-level report keys to return (``row["report"]`` holds only those; None where the
                cell has no report). The database extracts them (SQLite ``->``, PostgreSQL ``json ->``), so a
                large grid is not decoded whole: 5,000 full reports are ~60 MB of JSON. None: the whole report.
        """
        extract = self._report_extractors(report_keys) if report_keys else None
        columns = [c for c in cells_table.c if not (extract and c.name == "report")]
        query = select(*columns, *(extract or {}).values())
        if status:
            query = query.where(cells_table.c.status == status)
        if task:
            query = query.where(cells_table.c.task == task)
        if model:
            query = query.where(cells_table.c.model == model)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query.order_by(cells_table.c.key))]
        for row in rows:
            row["settings"] = json.loads(row["settings"] or "{}")
            if not extract:
                report = json.loads(row["report"]) if row["report"] else None
                row["report"] = report if report is None or not report_keys else {k: report.get(k) for k in report_keys}
                continue
            parts = {key: row.pop(f"report_{key}") for key in extract}
            if row["status"] != DONE or all(v is None for v in parts.values()):
                row["report"] = None
            else:
                row["report"] = {k: json.loads(v) if isinstance(v, str) else v for k, v in parts.items()}
        return rows

    def _report_extractors(self, keys: Sequence[str]) -> dict:
        """``{key: SQL expression giving report[key] as JSON text (or decoded JSON)}`` for this database;
        empty where the database cannot (the reports are then decoded whole and picked in Python)."""
        if any(not key.isidentifier() for key in keys):
            raise ValueError(f"report keys must be identifiers, got {list(keys)}")
        dialect = self.engine.dialect
        if dialect.name == "sqlite" and dialect.dbapi.sqlite_version_info >= (3, 38):
            return {k: cells_table.c.report.op("->")(f"$.{k}").label(f"report_{k}") for k in keys}
        if dialect.name == "postgresql":
            return {k: cast(cells_table.c.report, JSON)[k].label(f"report_{k}") for k in keys}
        return {}
