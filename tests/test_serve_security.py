"""``medhub serve`` access control and hostile requests: 4xx, nothing changes, nothing outside --root touched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import requests
from hub_fixture import start_server
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from medhub.errors import UsageError
from medhub.serve.auth import Auth, read_token_file


def _snapshot(folder: Path, skip: set[str] = frozenset()) -> dict:
    """Every file under ``folder`` with its size and sha256 (``skip``: names to ignore)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip and not p.name.endswith(".lock")
    }


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """A server of its own inside ``box/srv`` with a secret file beside its root, and one repo with one file."""
    base = tmp_path_factory.mktemp("box")
    (base / "secret.txt").write_text("root:x:0:0")
    server = start_server(base / "srv" / "root", extra_args=("--max-upload-mb", "1", "--access-log"))
    api = HfApi(endpoint=server.endpoint, token=server.token)
    api.create_repo("lab/safe")
    api.upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", repo_id="lab/safe")
    yield server, base
    server.stop()


def _auth(server) -> dict:
    return {"Authorization": f"Bearer {server.token}"}


HOSTILE_GETS = [
    "/lab/safe/resolve/main/..%2F..%2F..%2Fsecret.txt",
    "/lab/safe/resolve/main/%2E%2E/%2E%2E/%2E%2E/secret.txt",
    "/..%2F..%2F../resolve/main/secret.txt",
    "/lab/..%2Fsafe/resolve/main/a.txt",
    "/lab/safe/resolve/..%2F..%2Fmain/a.txt",
    "/lab/safe/resolve/main/%2Fetc%2Fpasswd",
    "/lab/safe/resolve/main/a.txt%00",
    "/lab/safe/resolve/main%00/a.txt",
    "/lab/safe/resolve/" + "x" * 300 + "/a.txt",
    "/api/models/lab/safe/tree/main/..%2F..",
    "/api/models/..%2F..%2F/safe",
    "/api/models/lab/safe/revision/..%2F..%2Frefs",
    "/api/models/lab/safe/commits/main..x",
    "/api/spaces/lab/safe",
    "/api/models/api/safe",
    "/lab/safe/resolve/%ff%fe/a.txt",
]


@pytest.mark.parametrize("path", HOSTILE_GETS)
def test_hostile_reads_are_refused(box, path):
    server, base = box
    before = _snapshot(base, skip={"root.log"})
    r = requests.get(server.endpoint + path, headers=_auth(server), timeout=30)
    assert 400 <= r.status_code < 500, (path, r.status_code)
    assert b"root:x" not in r.content
    assert _snapshot(base, skip={"root.log"}) == before


HOSTILE_WRITES = [
    ("POST", "/api/repos/create", b"{not json"),
    ("POST", "/api/repos/create", b"[1, 2]"),
    ("POST", "/api/repos/create", json.dumps({"name": "..", "organization": "lab"}).encode()),
    ("POST", "/api/repos/create", json.dumps({"name": "x", "organization": "../../tmp"}).encode()),
    ("POST", "/api/repos/create", json.dumps({"name": "x/../../y", "organization": "lab"}).encode()),
    ("POST", "/api/repos/create", json.dumps({"name": "x", "organization": "lab", "type": "space"}).encode()),
    ("POST", "/api/repos/create", json.dumps({"name": "x"}).encode()),
    (
        "POST",
        "/api/models/lab/safe/preupload/main",
        json.dumps({"files": [{"path": "../x", "size": 1, "sample": ""}]}).encode(),
    ),
    (
        "POST",
        "/api/models/lab/safe/preupload/main",
        json.dumps({"files": [{"path": "x", "size": -1, "sample": ""}]}).encode(),
    ),
    ("POST", "/api/models/lab/safe/commit/main", b"garbage\n"),
    ("POST", "/api/models/lab/safe/commit/main", b'{"key":"file","value":{"path":"x","content":"aGk="}}\n'),
    (
        "POST",
        "/api/models/lab/safe/commit/main",
        b'{"key":"header","value":{"summary":"s"}}\n{"key":"file","value":{"path":"../../escape","content":"aGk="}}\n',
    ),
    (
        "POST",
        "/api/models/lab/safe/commit/main",
        b'{"key":"header","value":{"summary":"s"}}\n{"key":"file","value":{"path":"/abs","content":"aGk="}}\n',
    ),
    (
        "POST",
        "/api/models/lab/safe/commit/main",
        b'{"key":"header","value":{"summary":"s"}}\n{"key":"file","value":{"path":"x","content":"!!!"}}\n',
    ),
    (
        "POST",
        "/api/models/lab/safe/commit/main",
        b'{"key":"header","value":{"summary":"s"}}\n{"key":"lfsFile","value":{"path":"x","algo":"sha256","oid":"'
        + b"a" * 64
        + b'"}}\n',
    ),
    (
        "POST",
        "/api/models/lab/safe/commit/main",
        b'{"key":"header","value":{"summary":"s"}}\n{"key":"file","value":{"path":"a.txt/b","content":"aGk="}}\n',
    ),
    (
        "POST",
        "/api/models/lab/safe/commit/main",
        b'{"key":"header","value":{"summary":"s","parentCommit":"nothex"}}\n',
    ),
    ("POST", "/api/models/lab/safe/commit/no-branch", b'{"key":"header","value":{"summary":"s"}}\n'),
    ("POST", "/api/models/lab/safe/commit/main", b"x" * (3 * 1024 * 1024)),
    (
        "POST",
        "/lab/safe.git/info/lfs/objects/batch",
        json.dumps({"operation": "upload", "objects": [{"oid": "a" * 64, "size": 10**15}]}).encode(),
    ),
    (
        "POST",
        "/lab/safe.git/info/lfs/objects/batch",
        json.dumps({"operation": "upload", "objects": [{"oid": "../x", "size": 1}]}).encode(),
    ),
    ("POST", "/api/models/lab/safe/branch/..", b"{}"),
    ("POST", "/api/models/lab/safe/tag/main", json.dumps({"tag": "../../x"}).encode()),
    ("DELETE", "/api/models/lab/safe/branch/main", b""),
    ("PUT", "/api/models/lab/safe/lfs-upload/" + "a" * 64 + "?size=2&expires=99999999999&sig=forged", b"hi"),
]


@pytest.mark.parametrize(("method", "path", "body"), HOSTILE_WRITES, ids=range(len(HOSTILE_WRITES)))
def test_hostile_writes_are_refused_and_change_nothing(box, method, path, body):
    server, base = box
    before = _snapshot(base, skip={"root.log"})
    r = requests.request(method, server.endpoint + path, data=body, headers=_auth(server), timeout=60)
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:200])
    assert r.json()["error"] and r.headers["X-Error-Message"]
    assert _snapshot(base, skip={"root.log"}) == before


def test_upload_with_a_wrong_sha256_is_rejected(box):
    server, base = box
    data, claimed = b"actual bytes", hashlib.sha256(b"other bytes").hexdigest()
    batch = requests.post(
        f"{server.endpoint}/lab/safe.git/info/lfs/objects/batch",
        json={"operation": "upload", "objects": [{"oid": claimed, "size": len(data)}]},
        headers=_auth(server),
        timeout=30,
    ).json()
    actions = batch["objects"][0]["actions"]
    before = _snapshot(base, skip={"root.log"})
    assert requests.put(actions["upload"]["href"], data=data, timeout=30).status_code == 400
    verify = requests.post(
        actions["verify"]["href"], json={"oid": claimed, "size": len(data)}, headers=_auth(server), timeout=30
    )
    assert verify.status_code == 404
    assert _snapshot(base, skip={"root.log"}) == before
    assert not list((server.root / "tmp").iterdir())


def test_upload_limit_is_enforced_through_the_client(box, tmp_path):
    server, _ = box
    big = tmp_path / "big.bin"
    big.write_bytes(b"\1" * (2 * 1024 * 1024))
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=server.endpoint, token=server.token).upload_file(
            path_or_fileobj=str(big), path_in_repo="big.bin", repo_id="lab/safe"
        )
    assert err.value.response.status_code == 413


def test_writes_need_a_valid_token(box):
    server, base = box
    before = _snapshot(base, skip={"root.log"})
    for token in (False, "wrong-token-123"):
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(endpoint=server.endpoint, token=token).create_repo("lab/evil")
        assert err.value.response.status_code == 401
    r = requests.post(
        f"{server.endpoint}/api/models/lab/safe/commit/main", data=b'{"key":"header","value":{}}', timeout=30
    )
    assert r.status_code == 401
    assert _snapshot(base, skip={"root.log"}) == before


def test_reads_need_a_token_without_public_read(box):
    server, _ = box
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("lab/safe", "a.txt", endpoint=server.endpoint, token=False)
    assert requests.get(f"{server.endpoint}/lab/safe/resolve/main/a.txt", timeout=30).status_code == 401
    ok = requests.get(f"{server.endpoint}/lab/safe/resolve/main/a.txt", headers=_auth(server), timeout=30)
    assert ok.content == b"hello"


def test_xet_is_answered_with_a_clear_501(box):
    server, _ = box
    r = requests.get(
        f"{server.endpoint}/api/models/lab/safe/xet-write-token/main", headers=_auth(server), timeout=30
    )
    assert r.status_code == 501 and "HF_HUB_DISABLE_XET" in r.json()["error"]


def test_the_token_never_appears_in_the_log(box):
    server, _ = box
    requests.get(f"{server.endpoint}/api/whoami-v2", headers=_auth(server), timeout=30).raise_for_status()
    requests.get(
        f"{server.endpoint}/api/whoami-v2", headers={"Authorization": "Bearer wrong-token-xyz"}, timeout=30
    )
    log = server.log.read_text()
    assert "GET /api/whoami-v2" in log  # the access log is on, so requests are logged...
    assert server.token not in log and "wrong-token-xyz" not in log  # ...but never a token


def test_public_read_allows_anonymous_reads_only(tmp_path):
    server = start_server(tmp_path / "root", extra_args=("--public-read",))
    try:
        api = HfApi(endpoint=server.endpoint, token=server.token)
        api.create_repo("lab/open")
        api.upload_file(path_or_fileobj=b"open", path_in_repo="f.txt", repo_id="lab/open")
        api.create_repo("lab/closed", private=True)
        anon = HfApi(endpoint=server.endpoint, token=False)
        assert (
            Path(
                hf_hub_download(
                    "lab/open", "f.txt", endpoint=server.endpoint, token=False, cache_dir=tmp_path / "c"
                )
            ).read_bytes()
            == b"open"
        )
        with pytest.raises(RepositoryNotFoundError):
            anon.model_info("lab/closed")
        assert api.model_info("lab/closed").private
        with pytest.raises(HfHubHTTPError):
            anon.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="lab/open")
    finally:
        server.stop()


def test_token_file_roles(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# comment\n\nwriter-token-1\nreader-token-2 alice read\n")
    auth = Auth(read_token_file(tokens), public_read=False, secret=b"k" * 32)
    assert auth.can_write("Bearer writer-token-1").name == "medhub"
    assert auth.can_read("Bearer reader-token-2").name == "alice"
    with pytest.raises(Exception, match="read-only") as err:
        auth.can_write("Bearer reader-token-2")
    assert err.value.status == 403
    assert "reader-token-2" not in repr(auth.can_read("Bearer reader-token-2"))
    tokens.write_text("short\n")
    with pytest.raises(UsageError):
        read_token_file(tokens)
