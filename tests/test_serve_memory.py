"""``medhub serve`` keeps a flat resident size under long sequences of reads (caches bounded by bytes).

The store is built with :class:`~medhub.serve.storage.Store` directly (fast), then served by a real
server and read with the real huggingface_hub client; the server's resident size comes from /proc.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_fixture import start_server
from huggingface_hub import HfApi

from medhub.serve.protocol import RepoRef
from medhub.serve.storage import Store
from medhub.serve.tree import Operation

FILES, COMMITS = 2000, 150


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """A dataset repo with 2,000 files and 150 commits (each commit a full tree of 2,000 entries)."""
    root = tmp_path_factory.mktemp("mem") / "root"
    store = Store(root)
    repo = RepoRef("datasets", "lab", "big")
    store.create_repo(repo, private=False, author="t")
    from medhub.serve.storage import file_entry

    data = b"x"
    sha = store.put_bytes(data)
    ops = [
        Operation(
            "add",
            f"split{i % 40}/shard-{i:05d}-of-a-dataset-with-long-names.csv",
            file_entry(sha, 1, lfs=False, data=data),
        )
        for i in range(FILES)
    ]
    store.create_commit(repo, "main", ops, summary="add files", author="t")
    for i in range(COMMITS - 2):
        entry = file_entry(store.put_bytes(str(i).encode()), len(str(i)), lfs=False, data=str(i).encode())
        store.create_commit(
            repo, "main", [Operation("add", f"log/{i}.txt", entry)], summary=f"c{i}", author="t"
        )
    del store
    return root


def test_resident_memory_stays_flat_under_reads(big_store):
    hub = start_server(big_store, extra_args=("--cache-mb", "32"))
    try:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        start = _rss_mib(hub.process.pid)
        commits = api.list_repo_commits("lab/big", repo_type="dataset")
        assert len(commits) == COMMITS
        after_history = _rss_mib(hub.process.pid)
        for _ in range(2):  # every commit's full tree, twice
            for c in commits[::3]:
                assert len(api.list_repo_files("lab/big", repo_type="dataset", revision=c.commit_id)) >= FILES
            api.list_repo_commits("lab/big", repo_type="dataset")
        end = _rss_mib(hub.process.pid)
        # the whole history at 2,000 entries per commit is ~150 MiB parsed: it must not be held
        assert after_history - start < 60, (start, after_history)
        assert end - start < 120, (start, after_history, end)
    finally:
        hub.stop()
