"""The store behind ``medhub serve``: immutable commits, atomic refs, locking, crash safety, and the CLI."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from hub_fixture import start_server
from huggingface_hub import HfApi, hf_hub_download

from medhub.errors import UsageError
from medhub.serve.protocol import ProtocolError, make_repo
from medhub.serve.storage import Operation, Store, file_entry

REPO = make_repo("models", "lab", "store")


def _add(store: Store, path: str, data: bytes) -> Operation:
    return Operation(
        "add", path, file_entry(hashlib.sha256(data).hexdigest(), len(data), lfs=False, data=data), data=data
    )


@pytest.fixture
def store(tmp_path):
    found = Store(tmp_path / "root")
    found.create_repo(REPO, private=False, author="t")
    return found


def test_commits_are_immutable_objects_named_by_their_content(store):
    head, _ = store.resolve(REPO, "main")
    new = store.create_commit(REPO, "main", [_add(store, "a.txt", b"a")], summary="add a", author="t")
    for commit_id in (head, new):
        raw = (store.repo_dir(REPO) / "commits" / f"{commit_id}.json").read_bytes()
        assert re.fullmatch(r"[0-9a-f]{40}", commit_id) and hashlib.sha1(raw).hexdigest() == commit_id
    assert set(store.commit(REPO, head).files) == {".gitattributes"}
    assert [c.id for c in store.history(REPO, new)] == [new, head]
    assert store.resolve(REPO, "refs/heads/main") == (new, "main")
    assert store.resolve(REPO, head) == (head, None)
    assert store.fsck() == []


def test_stale_parent_and_bad_operations_change_nothing(store):
    head, _ = store.resolve(REPO, "main")
    store.create_commit(REPO, "main", [_add(store, "d/x.txt", b"x")], summary="x", author="t")
    now = store.resolve(REPO, "main")
    bad = [
        ([_add(store, "y.txt", b"y")], head, 412),  # head moved on
        ([Operation("delete", "missing.txt")], None, 404),
        ([_add(store, "d", b"clash")], None, 400),  # 'd' is a folder
        ([_add(store, "d/x.txt/z", b"clash")], None, 400),  # 'd/x.txt' is a file
    ]
    for operations, parent, status in bad:
        with pytest.raises(ProtocolError) as err:
            store.create_commit(REPO, "main", operations, summary="bad", author="t", parent=parent)
        assert err.value.status == status
        assert store.resolve(REPO, "main") == now
    assert not store.has_blob(hashlib.sha256(b"clash").hexdigest())  # refused content is never stored
    with pytest.raises(ProtocolError) as err:
        store.resolve(REPO, "nope")
    assert err.value.code == "RevisionNotFound"


def test_concurrent_commits_lose_nothing(store):
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for i in range(5):
                data = f"{worker}-{i}".encode()
                store.create_commit(
                    REPO, "main", [_add(store, f"w{worker}/{i}.txt", data)], summary="w", author="t"
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    head, _ = store.resolve(REPO, "main")
    assert len(store.commit(REPO, head).files) == 41
    assert len(store.history(REPO, head)) == 41
    assert store.fsck() == []


def test_delete_and_half_created_repos(store, tmp_path):
    store.delete_repo(REPO)
    assert not store.exists(REPO)
    with pytest.raises(ProtocolError) as err:
        store.refs(REPO)
    assert err.value.code == "RepoNotFound"
    half = make_repo("models", "lab", "half")
    (store.repo_dir(half) / "commits").mkdir(parents=True)  # a creation that died before refs.json
    assert not store.exists(half)
    store.create_repo(half, private=False, author="t")
    assert store.fsck() == []


def test_one_server_per_root(tmp_path):
    first = Store(tmp_path / "root")
    with pytest.raises(UsageError):
        Store(tmp_path / "root")
    Store(tmp_path / "root", exclusive=False)  # inspection is fine
    del first


def test_kill_9_during_an_lfs_upload_leaves_a_consistent_store(tmp_path):
    server = start_server(tmp_path / "root")
    api = HfApi(endpoint=server.endpoint, token=server.token)
    api.create_repo("lab/crash")
    c1 = api.upload_file(path_or_fileobj=b"kept", path_in_repo="kept.txt", repo_id="lab/crash").oid
    data = os.urandom(24 * 1024 * 1024)
    oid = hashlib.sha256(data).hexdigest()
    batch = requests.post(
        f"{server.endpoint}/lab/crash.git/info/lfs/objects/batch",
        json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]},
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=30,
    ).json()
    href = batch["objects"][0]["actions"]["upload"]["href"]
    release = threading.Event()

    def body():
        for start in range(0, 4 << 20, 1 << 20):
            yield data[start : start + (1 << 20)]
        release.wait(60)  # hold the upload open half way
        yield data[4 << 20 :]

    uploader = threading.Thread(target=lambda: _quietly(requests.put, href, data=body(), timeout=60))
    uploader.start()
    tmp = server.root / "tmp"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(p.stat().st_size for p in tmp.glob("*.part")) < 3 << 20:
        time.sleep(0.05)
    assert sum(p.stat().st_size for p in tmp.glob("*.part")) >= 3 << 20, "upload never got half way"
    server.stop(signal.SIGKILL)
    release.set()
    uploader.join(60)
    store = Store(server.root, exclusive=False)
    assert not store.has_blob(oid)  # the half file is only ever in tmp/
    server = start_server(server.root)
    try:
        assert not list(tmp.iterdir())  # crash leftovers are gone
        assert Store(server.root, exclusive=False).fsck() == []
        again = HfApi(endpoint=server.endpoint, token=server.token)
        assert again.model_info("lab/crash").sha == c1
        path = hf_hub_download(
            "lab/crash", "kept.txt", endpoint=server.endpoint, token=server.token, cache_dir=tmp_path / "c"
        )
        assert Path(path).read_bytes() == b"kept"
        again.upload_file(path_or_fileobj=data, path_in_repo="big.bin", repo_id="lab/crash")
        assert store.has_blob(oid, len(data)) and Store(server.root, exclusive=False).fsck() == []
    finally:
        server.stop()


def _quietly(fn, *args, **kwargs):
    with contextlib.suppress(requests.RequestException):
        fn(*args, **kwargs)


def _first_line(process: subprocess.Popen, timeout: float = 60) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "no output from medhub serve"
    return process.stdout.readline()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_prints_one_line_and_stops_cleanly(tmp_path, sig):
    tokens = tmp_path / "tokens"
    tokens.write_text("cli-token-12345\n")
    command = [
        sys.executable,
        "-m",
        "medhub",
        "serve",
        "--root",
        str(tmp_path / "r"),
        "--port",
        "0",
        "--token-file",
        str(tokens),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _first_line(process)
        match = re.fullmatch(r"Serving on http://127\.0\.0\.1:(\d+)\n", line)
        assert match and int(match.group(1)) > 0
        r = requests.get(
            f"http://127.0.0.1:{match.group(1)}/api/whoami-v2",
            headers={"Authorization": "Bearer cli-token-12345"},
            timeout=30,
        )
        assert r.json()["name"] == "medhub"
        process.send_signal(sig)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0 and out == ""
        assert "cli-token-12345" not in err
    finally:
        process.kill()


def test_cli_reports_a_bad_token_file_in_one_line(tmp_path):
    command = [
        sys.executable,
        "-m",
        "medhub",
        "serve",
        "--root",
        str(tmp_path / "r"),
        "--token-file",
        str(tmp_path / "missing"),
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "token file" in out.stderr
