"""Garbage collection and checking of a medhub serve folder: only unreferenced, old-enough blobs go."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from medhub.cli import main
from medhub.serve.gc import collect_garbage, referenced_blobs
from medhub.serve.protocol import make_repo
from medhub.serve.storage import Operation, Store, file_entry

KEPT, GONE = make_repo("models", "lab", "kept"), make_repo("models", "lab", "gone")
SHARED, ONLY_GONE, OLD, STRAY = b"shared weights", b"only in the deleted repo", b"overwritten file", b"no commit"


def _add(path: str, data: bytes) -> Operation:
    entry = file_entry(hashlib.sha256(data).hexdigest(), len(data), lfs=True)
    return Operation("add", path, entry, data=data)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _age_all_blobs(root, seconds: float) -> None:
    past = time.time() - seconds
    for blob in (root / "blobs").glob("*/*/*"):
        os.utime(blob, (past, past))


@pytest.fixture
def root(tmp_path):
    """A store: 'kept' (a file later overwritten, plus a blob shared with 'gone'), 'gone' deleted, a stray blob."""
    store = Store(tmp_path / "root")
    for repo in (KEPT, GONE):
        store.create_repo(repo, private=False, author="t")
    store.create_commit(KEPT, "main", [_add("w.bin", OLD), _add("s.bin", SHARED)], summary="v1", author="t")
    store.create_commit(KEPT, "main", [_add("w.bin", b"new weights")], summary="v2", author="t")
    store.create_commit(GONE, "main", [_add("s.bin", SHARED), _add("g.bin", ONLY_GONE)], summary="x", author="t")
    store.delete_repo(GONE)
    store.put_bytes(STRAY)  # an LFS upload whose commit never came
    del store  # releases the server lock
    _age_all_blobs(tmp_path / "root", 3 * 86400)
    return tmp_path / "root"


def test_only_unreferenced_old_blobs_are_removed(root):
    store = Store(root)
    assert {_sha(SHARED), _sha(OLD)} <= referenced_blobs(store)  # an older commit still names OLD
    report = collect_garbage(store, min_age_s=86400)
    assert sorted(report.removed) == sorted([_sha(ONLY_GONE), _sha(STRAY)])
    assert report.removed_bytes == len(ONLY_GONE) + len(STRAY)
    assert not store.has_blob(_sha(STRAY)) and not store.has_blob(_sha(ONLY_GONE))
    assert store.read_blob(_sha(SHARED)) == SHARED and store.read_blob(_sha(OLD)) == OLD
    assert store.fsck() == []
    assert collect_garbage(store, min_age_s=0).removed == []  # nothing left to collect


def test_dry_run_and_young_blobs_remove_nothing(root):
    store = Store(root)
    dry = collect_garbage(store, min_age_s=86400, dry_run=True)
    assert len(dry.removed) == 2 and store.has_blob(_sha(STRAY)) and store.has_blob(_sha(ONLY_GONE))
    fresh = store.put_bytes(b"uploaded a second ago")
    report = collect_garbage(store, min_age_s=3600)
    assert report.young == 1 and store.has_blob(fresh)


def test_cli_gc_refuses_a_running_server_then_collects(root, capsys):
    running = Store(root)  # what medhub serve holds
    assert main(["store", "gc", "--root", str(root)]) == 2
    assert "stop it, then run medhub store gc" in capsys.readouterr().err
    del running
    assert main(["store", "gc", "--root", str(root), "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 2
    assert main(["store", "gc", "--root", str(root)]) == 0
    assert capsys.readouterr().out.startswith("removed 2 unreferenced blobs")


def test_cli_fsck_reports_a_missing_blob(root, capsys):
    assert main(["store", "fsck", "--root", str(root)]) == 0
    assert capsys.readouterr().out.startswith("ok")
    Store(root, exclusive=False).blob_path(_sha(SHARED)).unlink()
    assert main(["store", "fsck", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"blob {_sha(SHARED)} is missing" in out and "s.bin" in out and "repair:" in out


def test_cli_refuses_a_folder_that_is_not_a_store(tmp_path, capsys):
    assert main(["store", "gc", "--root", str(tmp_path)]) == 2
    assert "not a medhub serve folder" in capsys.readouterr().err
