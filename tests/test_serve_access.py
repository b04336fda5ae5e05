"""``medhub serve`` tokens: redaction in logs, token-file permissions, reload on SIGHUP, per-namespace roles
and the audit log. Real servers on 127.0.0.1 and the real huggingface_hub client."""

from __future__ import annotations

import json
import signal
import time

import pytest
import requests
from hub_fixture import start_server
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from medhub.errors import UsageError
from medhub.serve.audit import read_audit_log
from medhub.serve.auth import Auth, read_token_file

ADMIN, ALICE, BOB, CAROL = "admin-token-0001", "alice-token-0002", "bob-token-0003", "carol-token-0004"
TOKENS = (
    f"{ADMIN} root\n"  # no role: admin everywhere (what a bare token could do before roles)
    f"{ALICE} alice read radiology=write\n"  # reads everything, writes in radiology only
    f"{BOB} bob write pathology=none\n"  # writes everywhere but cannot delete; cannot see pathology
    f"{CAROL} carol none radiology=admin\n"  # only radiology, with deletes
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    hub = start_server(
        tmp_path_factory.mktemp("access") / "root",
        token=ADMIN,
        token_lines=TOKENS,
        extra_args=("--access-log",),
    )
    root = HfApi(endpoint=hub.endpoint, token=ADMIN)
    for repo in ("radiology/cxr", "pathology/wsi", "lab/shared"):
        root.create_repo(repo)
        root.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo)
    yield hub
    hub.stop()


def _api(hub, token: str) -> HfApi:
    return HfApi(endpoint=hub.endpoint, token=token)


# ---- item 9: per-namespace roles and the audit log -----------------------------------------------
def test_write_access_follows_the_namespace(server):
    alice = _api(server, ALICE)
    alice.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id="radiology/cxr")
    with pytest.raises(HfHubHTTPError) as err:
        alice.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id="lab/shared")
    assert err.value.response.status_code == 403
    assert alice.model_info("lab/shared").sha  # reading is allowed everywhere
    with pytest.raises(HfHubHTTPError) as err:
        alice.create_repo("lab/alice-new")
    assert err.value.response.status_code == 403
    alice.create_repo("radiology/alice-new")


def test_a_namespace_without_read_access_looks_missing(server):
    bob = _api(server, BOB)
    with pytest.raises(RepositoryNotFoundError):
        bob.model_info("pathology/wsi")
    r = requests.get(
        f"{server.endpoint}/pathology/wsi/resolve/main/x.txt",
        headers={"Authorization": f"Bearer {BOB}"},
        timeout=30,
    )
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "RepoNotFound"
    carol = _api(server, CAROL)
    with pytest.raises(RepositoryNotFoundError):
        carol.model_info("lab/shared")
    assert carol.model_info("radiology/cxr").sha


def test_deletes_need_the_admin_role(server):
    bob, carol = _api(server, BOB), _api(server, CAROL)
    bob.create_repo("lab/bobs")
    bob.create_tag("lab/bobs", tag="v1")
    with pytest.raises(HfHubHTTPError) as err:
        bob.delete_repo("lab/bobs")
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        bob.delete_tag("lab/bobs", tag="v1")  # a tag is moved by deleting it: admin only
    assert err.value.response.status_code == 403
    assert bob.model_info("lab/bobs").sha
    carol.create_repo("radiology/tmp")
    carol.delete_repo("radiology/tmp")
    _api(server, ADMIN).delete_repo("lab/bobs")


def test_every_write_is_in_the_audit_log(server):
    alice = _api(server, ALICE)
    info = alice.upload_file(path_or_fileobj=b"audited", path_in_repo="audit.txt", repo_id="radiology/cxr")
    alice.create_branch("radiology/cxr", branch="audit-branch")
    records = read_audit_log(server.root / "audit.log")
    commit = [r for r in records if r["action"] == "commit" and r["commit"] == info.oid]
    assert len(commit) == 1
    assert (
        commit[0]["user"] == "alice"
        and commit[0]["repo"] == "models/radiology/cxr"
        and commit[0]["ref"] == "main"
    )
    assert commit[0]["client"] == "127.0.0.1" and commit[0]["time"].endswith("Z")
    assert any(
        r["action"] == "create_branch" and r["ref"] == "audit-branch" and r["user"] == "alice"
        for r in records
    )
    assert {"create_repo", "commit"} <= {r["action"] for r in records if r["user"] == "root"}
    refused = [r for r in records if r["repo"] == "models/lab/alice-new"]
    assert refused == []  # a refused write is not recorded as done


def test_token_file_format_stays_compatible(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("old-bare-token\nold-writer-token bob write\nold-reader-token alice read\n")
    auth = Auth(read_token_file(tokens), public_read=False, secret=b"k" * 32)
    assert auth.can_write("Bearer old-writer-token").name == "bob"
    assert auth.can_read("Bearer old-reader-token").name == "alice"
    for bad in (
        "tok-tok-tok bob write lab=owner\n",
        "tok-tok-tok bob lab=write read\n",
        "tok-tok-tok bob superuser\n",
    ):
        tokens.write_text(bad)
        with pytest.raises(UsageError):
            read_token_file(tokens)


# ---- item 7: tokens never reach the log; token-file permissions; reload on SIGHUP ----------------
def test_query_string_secrets_are_redacted_in_the_access_log(server):
    secret = "hf_querystringsecret123456"
    r = requests.get(
        f"{server.endpoint}/api/models/lab/shared/tree/main?recursive=1&token={secret}&access_token={secret}",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
    )
    assert r.status_code == 200
    r = requests.get(f"{server.endpoint}/api/models/lab/shared?api_key={ADMIN}", timeout=30)
    # an LFS upload: its signed URL carries a signature, which is a credential too
    _api(server, ADMIN).upload_file(path_or_fileobj=b"\0" * 100, path_in_repo="w.bin", repo_id="lab/shared")
    text = server.log.read_text()
    assert "recursive=1" in text  # the access log is on
    assert secret not in text and ADMIN not in text
    assert "token=[redacted]" in text
    assert "lfs-upload" in text and "sig=[redacted]" in text
    for line in text.splitlines():
        if "sig=" in line:
            assert "sig=[redacted]" in line


def test_a_token_file_readable_by_others_is_warned_about(tmp_path):
    hub = start_server(tmp_path / "root", token_mode=0o644)
    try:
        assert "readable by other users (mode 0644)" in hub.log.read_text()
        assert f"chmod 600 {hub.token_file}" in hub.log.read_text()
    finally:
        hub.stop()
    quiet = start_server(tmp_path / "root2")
    quiet.stop()
    assert "readable by other users" not in quiet.log.read_text()


def test_sighup_reloads_the_token_file(tmp_path):
    hub = start_server(tmp_path / "root", token=ADMIN, token_lines=f"{ADMIN}\n{ALICE} alice write\n")
    try:
        alice = _api(hub, ALICE)
        alice.create_repo("lab/hup")
        hub.token_file.write_text(f"{ADMIN}\n{BOB} bob write\n")  # alice revoked, bob added
        hub.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = requests.get(
                f"{hub.endpoint}/api/whoami-v2", headers={"Authorization": f"Bearer {ALICE}"}, timeout=30
            )
            if r.status_code == 401:
                break
            time.sleep(0.1)
        assert r.status_code == 401
        assert hub.process.poll() is None  # SIGHUP no longer kills the server
        assert _api(hub, BOB).whoami()["name"] == "bob"
        hub.token_file.write_text("short\n")  # a broken file keeps the previous tokens
        hub.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "not reloaded" not in hub.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _api(hub, BOB).whoami()["name"] == "bob"
    finally:
        hub.stop()
    assert json.dumps(hub.log.read_text()).count(BOB) == 0
