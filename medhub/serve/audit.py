"""The audit log of ``medhub serve``: one JSON line per write, appended, never rewritten.

Each line records who (the token's name from the token file, and the client address), what (the action,
the repo, the revision or ref, the commit it produced or pointed at) and when (UTC, milliseconds)::

    {"time":"2026-11-30T19:02:11.123Z","user":"alice","client":"10.0.0.7","action":"commit",
     "repo":"models/radiology/cxr-net","ref":"main","commit":"3f1c..."}

The file is opened with ``O_APPEND`` and every line goes out in a single ``write`` followed by
``fsync``, so concurrent writers never interleave and a crash loses at most the line being written.
Make it append-only for the server's user too with ``chattr +a`` (see docs/serve.md).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from medhub.errors import UsageError

#: Actions written to the audit log.
ACTIONS = (
    "create_repo",
    "delete_repo",
    "commit",
    "create_branch",
    "delete_branch",
    "create_tag",
    "delete_tag",
    "lfs_upload",
)


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class AuditLog:
    """Appends write records to ``path`` (created with mode 0600 if missing).

    Args:
        path: the log file.

    Raises:
        UsageError: the file cannot be opened for appending.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:  # fail at start-up, not after a commit has been made
            os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
        except OSError as exc:
            raise UsageError(
                f"cannot append to the audit log {self.path}: {exc.strerror}; pick another --audit-log"
            ) from None

    def record(self, action: str, user: str, client: str | None, repo: str, **details: object) -> None:
        """Append one line: ``action`` (one of :data:`ACTIONS`) by ``user`` on ``repo`` (``type/ns/name``)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        entry = {"time": _now(), "user": user, "client": client, "action": action, "repo": repo, **details}
        line = (json.dumps(entry, separators=(",", ":"), ensure_ascii=True) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)


def read_audit_log(path: str | os.PathLike) -> list[dict]:
    """Every record of an audit log, oldest first (an empty list when the file does not exist)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
