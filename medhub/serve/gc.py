"""Garbage collection for a ``medhub serve`` store: remove blobs that no stored commit refers to.

Blobs are shared between repos and never rewritten, so deleting a repo or abandoning an upload (an LFS
upload whose commit never came) leaves files that nothing reads. A blob is kept when any commit file of
any existing repo names it, whether or not a branch or tag still reaches that commit (commits stay
addressable by id). Blobs younger than ``min_age_s`` are kept too: a client may upload now and commit in a
moment. Run it on a stopped server: :class:`~medhub.serve.storage.Store` takes the server's lock.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from medhub.serve.protocol import SHA256_HEX
from medhub.serve.storage import Store

log = logging.getLogger(__name__)


@dataclass
class GcReport:
    """What a collection found and did."""

    kept: int = 0
    young: int = 0
    removed: list[str] = field(default_factory=list)
    removed_bytes: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict:
        """A JSON-serialisable summary (the removed sha256s included)."""
        return {"kept": self.kept, "kept_young": self.young, "removed": len(self.removed),
                "removed_bytes": self.removed_bytes, "dry_run": self.dry_run, "removed_sha256": self.removed}

    def summary(self) -> str:
        """One line for people."""
        verb = "would remove" if self.dry_run else "removed"
        return (f"{verb} {len(self.removed)} unreferenced blobs ({self.removed_bytes / 1e6:.1f} MB); kept "
                f"{self.kept} referenced and {self.young} too recent to judge")


def referenced_blobs(store: Store) -> set[str]:
    """sha256 of every file in every stored commit of every repo."""
    found: set[str] = set()
    for commit_file in (store.root / "repos").glob("*/*/*/commits/*.json"):
        files = json.loads(commit_file.read_bytes())["files"]
        found.update(entry["sha256"] for entry in files.values())
    return found


def stored_blobs(store: Store) -> list[Path]:
    """Every blob file (``blobs/ab/cd/<sha256>``)."""
    return [p for p in (store.root / "blobs").glob("*/*/*") if SHA256_HEX.fullmatch(p.name) and p.is_file()]


def collect_garbage(store: Store, *, min_age_s: float = 24 * 3600, dry_run: bool = False) -> GcReport:
    """Remove unreferenced blobs older than ``min_age_s`` (or only report them with ``dry_run``)."""
    keep = referenced_blobs(store)
    report = GcReport(dry_run=dry_run)
    cutoff = time.time() - min_age_s
    for blob in stored_blobs(store):
        if blob.name in keep:
            report.kept += 1
            continue
        status = blob.stat()
        if status.st_mtime > cutoff:
            report.young += 1
            continue
        report.removed.append(blob.name)
        report.removed_bytes += status.st_size
        if not dry_run:
            os.unlink(blob)
            log.info("removed unreferenced blob %s (%d bytes)", blob.name, status.st_size)
    if not dry_run:
        _remove_empty_folders(store.root / "blobs")
    return report


def _remove_empty_folders(blobs: Path) -> None:
    for folder in sorted((p for p in blobs.glob("*/*") if p.is_dir()), reverse=True):
        for path in (folder, folder.parent):
            try:
                path.rmdir()
            except OSError:  # not empty
                break
