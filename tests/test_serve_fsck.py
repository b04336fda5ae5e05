"""``medhub store fsck`` finds corrupted content and altered commits, and says how to repair them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hub_fixture import start_server
from huggingface_hub import HfApi, hf_hub_download

from medhub.cli import main
from medhub.serve.protocol import RepoRef
from medhub.serve.storage import Store

WEIGHTS = bytes(range(256)) * 400  # an LFS file (binary)
CONFIG = b'{"num_classes": 3}'  # a regular file


@pytest.fixture
def served(tmp_path):
    hub = start_server(tmp_path / "root")
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo("lab/fsck")
    api.upload_file(path_or_fileobj=WEIGHTS, path_in_repo="model.bin", repo_id="lab/fsck")
    api.upload_file(path_or_fileobj=CONFIG, path_in_repo="config.json", repo_id="lab/fsck")
    yield hub, api
    hub.stop()


def _flip_a_bit(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("content", [WEIGHTS, CONFIG])
def test_a_bit_flip_is_found_and_repaired_by_uploading_again(served, content, capsys, tmp_path):
    hub, api = served
    root = str(hub.root)
    assert main(["store", "fsck", "--root", root]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok") and "blobs" in err  # progress on stderr
    sha = hashlib.sha256(content).hexdigest()
    blob = Store(hub.root, exclusive=False).blob_path(sha)
    _flip_a_bit(blob)
    assert main(["store", "fsck", "--root", root, "--quick"]) == 0  # sizes only: the old check
    capsys.readouterr()
    assert main(["store", "fsck", "--root", root]) == 1
    out = capsys.readouterr().out
    assert f"blob {sha} is corrupt" in out and "repair:" in out and "--quarantine" in out
    assert main(["store", "fsck", "--root", root, "--quarantine", "--no-progress"]) == 1
    assert (hub.root / "quarantine" / sha).is_file() and not blob.exists()
    # the repair the message names: upload the same file again; the server asks for the bytes
    name = "model.bin" if content is WEIGHTS else "config.json"
    api.upload_file(path_or_fileobj=content, path_in_repo=name, repo_id="lab/fsck")
    capsys.readouterr()
    assert main(["store", "fsck", "--root", root]) == 0
    fresh = hf_hub_download(
        "lab/fsck", name, endpoint=hub.endpoint, token=hub.token, cache_dir=tmp_path / "c"
    )
    assert Path(fresh).read_bytes() == content


def test_an_altered_commit_is_found(served, capsys):
    hub, api = served
    store = Store(hub.root, exclusive=False)
    head = api.model_info("lab/fsck").sha
    commit_file = store.repo_dir(RepoRef("models", "lab", "fsck")) / "commits" / f"{head}.json"
    body = json.loads(commit_file.read_bytes())
    body["files"]["config.json"]["size"] += 1
    commit_file.chmod(0o644)
    commit_file.write_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    assert main(["store", "fsck", "--root", str(hub.root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"@{head[:12]}: commit file does not hash to its id" in out and "restore" in out


def test_a_missing_parent_and_a_dangling_ref_are_found(served, capsys):
    hub, api = served
    store = Store(hub.root, exclusive=False)
    commits = store.repo_dir(RepoRef("models", "lab", "fsck")) / "commits"
    first = api.list_repo_commits("lab/fsck")[-1].commit_id
    (commits / f"{first}.json").unlink()
    assert main(["store", "fsck", "--root", str(hub.root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"parent commit {first} is missing" in out
