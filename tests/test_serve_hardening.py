"""``medhub serve``: names, request field types, and reads racing a delete/recreate, on a real server.

Every refusal must be a 4xx in the Hub's error shape (``X-Error-Message`` header, ``{"error": ...}``
body) and leave no traceback in the server's log.
"""

from __future__ import annotations

import base64
import json
import threading

import pytest
import requests
from hub_fixture import start_server
from huggingface_hub import HfApi


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    hub = start_server(tmp_path_factory.mktemp("hard") / "root")
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo("lab/names")
    api.upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", repo_id="lab/names")
    api.create_branch("lab/names", branch="feature")
    yield hub
    hub.stop()


def _auth(hub) -> dict:
    return {"Authorization": f"Bearer {hub.token}"}


def _refused(response: requests.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers.get("X-Error-Message"), response.headers
    assert isinstance(response.json().get("error"), str)


def _ndjson(*lines: dict) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _heads(hub) -> dict:
    return {
        b.name: b.target_commit
        for b in HfApi(endpoint=hub.endpoint, token=hub.token).list_repo_refs("lab/names").branches
    }


# ---- item 4: names ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        {"name": "x\n", "organization": "lab"},
        {"name": "x", "organization": "lab\n"},
        {"name": "x.git\n", "organization": "lab"},
    ],
)
def test_trailing_newlines_are_refused_in_repo_names(server, body):
    r = requests.post(f"{server.endpoint}/api/repos/create", json=body, headers=_auth(server), timeout=30)
    _refused(r)
    assert not list((server.root / "repos").rglob("*\n*"))


@pytest.mark.parametrize("name", ["dev%0A", "v1%0A"])
def test_trailing_newlines_are_refused_in_branches_and_tags(server, name):
    r = requests.post(
        f"{server.endpoint}/api/models/lab/names/branch/{name}", headers=_auth(server), timeout=30
    )
    _refused(r)
    r = requests.post(
        f"{server.endpoint}/api/models/lab/names/tag/main",
        json={"tag": "v1\n"},
        headers=_auth(server),
        timeout=30,
    )
    _refused(r)
    assert set(_heads(server)) == {"main", "feature"}


def test_an_unencoded_slash_in_a_revision_changes_no_branch(server):
    before = _heads(server)
    commit = _ndjson(
        {"key": "header", "value": {"summary": "s"}},
        {
            "key": "file",
            "value": {"path": "b.txt", "content": base64.b64encode(b"b").decode(), "encoding": "base64"},
        },
    )
    r = requests.post(
        f"{server.endpoint}/api/models/lab/names/commit/feature/x",
        data=commit,
        headers={**_auth(server), "Content-Type": "application/x-ndjson"},
        timeout=30,
    )
    _refused(r)
    r = requests.delete(
        f"{server.endpoint}/api/models/lab/names/branch/feature/x", headers=_auth(server), timeout=30
    )
    _refused(r)
    r = requests.post(
        f"{server.endpoint}/api/models/lab/names/tag/feature/x",
        json={"tag": "t"},
        headers=_auth(server),
        timeout=30,
    )
    _refused(r)
    assert _heads(server) == before
    # encoded, the same revision is a (missing) branch name, not "feature"
    r = requests.post(
        f"{server.endpoint}/api/models/lab/names/commit/feature%2Fx",
        data=commit,
        headers={**_auth(server), "Content-Type": "application/x-ndjson"},
        timeout=30,
    )
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "RevisionNotFound"
    assert _heads(server) == before


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".git/hooks/post-checkout",
        "sub/.git/config",
        ".GIT/config",
        ".cache/huggingface/download/a.txt.metadata",
        "a/.git",
    ],
)
def test_paths_the_client_refuses_are_refused_in_commits(server, path):
    before = _heads(server)
    commit = _ndjson(
        {"key": "header", "value": {"summary": "plant"}},
        {
            "key": "file",
            "value": {"path": path, "content": base64.b64encode(b"[core]\n").decode(), "encoding": "base64"},
        },
    )
    r = requests.post(
        f"{server.endpoint}/api/models/lab/names/commit/main",
        data=commit,
        headers={**_auth(server), "Content-Type": "application/x-ndjson"},
        timeout=30,
    )
    _refused(r)
    r = requests.post(
        f"{server.endpoint}/api/models/lab/names/preupload/main",
        json={"files": [{"path": path, "size": 7, "sample": ""}]},
        headers=_auth(server),
        timeout=30,
    )
    _refused(r)
    assert _heads(server) == before


# ---- item 5: every field of every request is type-checked ---------------------------------------
OID = "a" * 64
BAD_FIELDS = [
    ("POST", "/api/repos/create", {"name": ["x"], "organization": "lab"}),
    ("POST", "/api/repos/create", {"name": "typed", "organization": "lab", "private": "no"}),
    ("POST", "/api/repos/create", {"name": "typed", "organization": "lab", "visibility": 1}),
    ("POST", "/api/repos/create", {"name": "typed", "organization": 5}),
    ("POST", "/api/repos/create", {"name": "typed", "organization": "lab", "type": ["model"]}),
    ("DELETE", "/api/repos/delete", {"name": "names", "organization": "lab", "type": 1}),
    ("POST", "/api/models/lab/names/preupload/main", {"files": [1]}),
    ("POST", "/api/models/lab/names/preupload/main", {"files": [{"path": "a", "size": True, "sample": ""}]}),
    ("POST", "/api/models/lab/names/preupload/main", {"files": [{"path": "a", "size": 1, "sample": 5}]}),
    ("POST", "/api/models/lab/names/preupload/main", {"files": "a"}),
    (
        "POST",
        "/lab/names.git/info/lfs/objects/batch",
        {"operation": "upload", "objects": [{"oid": OID, "size": True}]},
    ),
    (
        "POST",
        "/lab/names.git/info/lfs/objects/batch",
        {"operation": "upload", "objects": [{"oid": OID, "size": "5"}]},
    ),
    ("POST", "/lab/names.git/info/lfs/objects/batch", {"operation": ["upload"], "objects": []}),
    (
        "POST",
        "/lab/names.git/info/lfs/objects/batch",
        {"operation": "upload", "objects": [], "transfers": "basic"},
    ),
    ("POST", "/api/models/lab/names/lfs-verify", {"oid": OID, "size": True}),
    ("POST", "/api/models/lab/names/branch/typed", {"startingPoint": 5}),
    ("POST", "/api/models/lab/names/tag/main", {"tag": ["v"]}),
    ("POST", "/api/models/lab/names/tag/main", {"tag": "v9", "message": 5}),
    ("POST", "/api/validate-yaml", {"content": 5}),
]


@pytest.mark.parametrize(("method", "path", "body"), BAD_FIELDS)
def test_badly_typed_fields_are_4xx(server, method, path, body):
    r = requests.request(method, server.endpoint + path, json=body, headers=_auth(server), timeout=30)
    _refused(r)
    assert "Traceback" not in server.log.read_text(errors="replace")


BAD_COMMITS = [
    [{"key": "header", "value": {"summary": 5}}],
    [{"key": "header", "value": {"summary": "s", "parentCommit": 5}}],
    [{"key": "header", "value": {"summary": "s"}}, {"key": "file", "value": {"path": "x", "content": 5}}],
    [
        {"key": "header", "value": {"summary": "s"}},
        {"key": "file", "value": {"path": "x", "content": "", "encoding": 1}},
    ],
    [
        {"key": "header", "value": {"summary": "s"}},
        {"key": "lfsFile", "value": {"path": "x", "oid": OID, "size": "1"}},
    ],
    [
        {"key": "header", "value": {"summary": "s"}},
        {"key": "lfsFile", "value": {"path": "x", "oid": OID, "algo": 1}},
    ],
    [{"key": "header", "value": {"summary": "s"}}, {"key": "deletedFile", "value": {"path": 5}}],
    [{"key": "header", "value": {"summary": "s"}}, {"key": "deletedFolder", "value": {"path": ["a"]}}],
    [{"key": "header", "value": []}],
    [["key", "header"]],
]


@pytest.mark.parametrize("lines", BAD_COMMITS)
def test_badly_typed_commit_lines_are_4xx(server, lines):
    before = _heads(server)
    r = requests.post(
        f"{server.endpoint}/api/models/lab/names/commit/main",
        data=_ndjson(*lines),
        headers={**_auth(server), "Content-Type": "application/x-ndjson"},
        timeout=30,
    )
    _refused(r)
    assert _heads(server) == before


def test_an_lfs_batch_with_a_boolean_size_gets_no_upload_url(server):
    data = b"x"
    import hashlib

    oid = hashlib.sha256(data).hexdigest()
    r = requests.post(
        f"{server.endpoint}/lab/names.git/info/lfs/objects/batch",
        headers=_auth(server),
        timeout=30,
        json={"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": True}]},
    )
    _refused(r)
    assert "actions" not in r.text
    # a signed URL whose size is not a number (as one signed for "size": true was) is a 4xx too
    r = requests.put(
        f"{server.endpoint}/api/models/lab/names/lfs-upload/{oid}?size=True&expires=9999999999&sig=00",
        data=data,
        timeout=30,
    )
    _refused(r)
    assert "Traceback" not in server.log.read_text(errors="replace")


# ---- item 6: reads racing a delete and re-creation of the repo ----------------------------------
def test_reads_racing_delete_and_recreate_get_404_or_content(tmp_path):
    hub = start_server(tmp_path / "root")
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    versions = {b"v1 " * 100, b"v2 " * 100}
    api.create_repo("lab/race")
    api.upload_file(path_or_fileobj=b"v1 " * 100, path_in_repo="f.txt", repo_id="lab/race")
    stop, seen, problems = threading.Event(), [], []

    def churn() -> None:
        for i in range(40):
            api.delete_repo("lab/race")
            api.create_repo("lab/race")
            api.upload_file(
                path_or_fileobj=(b"v2 " if i % 2 else b"v1 ") * 100, path_in_repo="f.txt", repo_id="lab/race"
            )
        stop.set()

    def read() -> None:
        session = requests.Session()
        session.headers.update(_auth(hub))
        urls = [
            f"{hub.endpoint}/lab/race/resolve/main/f.txt",
            f"{hub.endpoint}/api/models/lab/race",
            f"{hub.endpoint}/api/models/lab/race/tree/main?recursive=1",
            f"{hub.endpoint}/api/models/lab/race/commits/main",
            f"{hub.endpoint}/api/models/lab/race/refs",
            f"{hub.endpoint}/api/models/lab/race/revision/main",
        ]
        i = 0
        while not stop.is_set():
            url = urls[i % len(urls)]
            i += 1
            try:
                r = session.get(url, timeout=30)
            except requests.RequestException as exc:
                problems.append(f"{url}: {type(exc).__name__}")
                continue
            seen.append(r.status_code)
            if r.status_code == 200 and url.endswith("f.txt") and r.content not in versions:
                problems.append(f"{url}: unexpected content {r.content[:20]!r}")
            elif r.status_code not in (200, 404):
                problems.append(f"{url}: {r.status_code} {r.text[:100]}")
            elif r.status_code == 404 and r.headers.get("X-Error-Code") not in (
                "RepoNotFound",
                "RevisionNotFound",
                "EntryNotFound",
            ):
                problems.append(f"{url}: 404 without an error code")

    try:
        readers = [threading.Thread(target=read) for _ in range(6)]
        writer = threading.Thread(target=churn)
        for t in (*readers, writer):
            t.start()
        for t in (writer, *readers):
            t.join(300)
        assert not problems, problems[:5]
        assert 200 in seen
        assert "Traceback" not in hub.log.read_text(errors="replace")
    finally:
        hub.stop()


@pytest.mark.parametrize(
    "front",
    [
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            for p, c in zip("abcdefgh", "bcdefghi")
        )
        + "license: mit\n",
        "license: mit\nx: " + "[" * 5000 + "]" * 5000 + "\n",
    ],
    ids=["alias-bomb", "deep"],
)
def test_hostile_model_card_front_matter_is_ignored(server, front):
    api = HfApi(endpoint=server.endpoint, token=server.token)
    repo = f"lab/card-{len(front)}"
    api.create_repo(repo)
    api.upload_file(
        path_or_fileobj=f"---\n{front}---\n# card\n".encode(), path_in_repo="README.md", repo_id=repo
    )
    r = requests.get(f"{server.endpoint}/api/models/{repo}", headers=_auth(server), timeout=60)
    assert r.status_code == 200 and len(r.content) < 100_000
    assert "cardData" not in r.json()
    assert "Traceback" not in server.log.read_text(errors="replace")
