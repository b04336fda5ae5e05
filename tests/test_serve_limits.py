"""``medhub serve`` against careless or hostile clients: bodies, JSON nesting, slow and idle connections.

Every check runs a real server on 127.0.0.1; the client side is raw sockets, requests, or huggingface_hub.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import requests
from hub_fixture import start_server
from huggingface_hub import HfApi, hf_hub_download

from medhub.serve.tree import list_tree


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server with short timeouts, a small connection limit, and a 1024 open-files limit."""
    base = tmp_path_factory.mktemp("limits")
    args = ("--header-timeout", "2", "--body-timeout", "2", "--keep-alive-requests", "3")
    hub = start_server(base / "root", extra_args=args, fd_limit=1024)
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo("lab/limits")
    api.upload_file(path_or_fileobj=b'{"a": 1}', path_in_repo="config.json", repo_id="lab/limits")
    yield hub
    hub.stop()


def _auth(hub) -> dict:
    return {"Authorization": f"Bearer {hub.token}"}


def _assert_hub_error(response: requests.Response, low: int = 400, high: int = 499) -> None:
    assert low <= response.status_code <= high, (response.status_code, response.text[:200])
    assert response.headers.get("X-Error-Message")
    assert isinstance(response.json()["error"], str)


def _no_traceback(hub) -> None:
    assert "Traceback" not in hub.log.read_text(errors="replace")


# ---- item 1: bodies of token-less requests are small; JSON nesting is bounded -------------------
def test_anonymous_bodies_are_small(server):
    big = json.dumps({"content": "x" * (1 << 20)}).encode()
    r = requests.post(f"{server.endpoint}/api/validate-yaml", data=big, timeout=60)
    _assert_hub_error(r, 413, 413)
    # with a token the same body is accepted (a README can be large)
    r = requests.post(f"{server.endpoint}/api/validate-yaml", data=big, headers=_auth(server), timeout=60)
    assert r.status_code == 200
    # an invalid token is refused before the body is read
    r = requests.post(
        f"{server.endpoint}/api/validate-yaml",
        data=big,
        headers={"Authorization": "Bearer nope-nope"},
        timeout=60,
    )
    _assert_hub_error(r, 401, 401)


DEEP = b"[" * 100_000 + b"]" * 100_000
SHALLOW_BUT_TOO_DEEP = b'{"files": ' + b"[" * 40 + b"]" * 40 + b"}"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/repos/create", DEEP),
        ("POST", "/api/validate-yaml", DEEP),
        ("POST", "/api/models/lab/limits/preupload/main", DEEP),
        ("POST", "/api/models/lab/limits/preupload/main", SHALLOW_BUT_TOO_DEEP),
        ("POST", "/lab/limits.git/info/lfs/objects/batch", DEEP),
        ("POST", "/api/models/lab/limits/commit/main", b'{"key":"header","value":{}}\n' + DEEP),
        ("POST", "/api/models/lab/limits/branch/dev", DEEP),
        ("DELETE", "/api/repos/delete", DEEP),
    ],
)
def test_deeply_nested_json_is_a_400(server, method, path, body):
    r = requests.request(method, server.endpoint + path, data=body, headers=_auth(server), timeout=60)
    _assert_hub_error(r, 400, 400)
    assert "nested" in r.json()["error"]
    _no_traceback(server)


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /api/whoami-v2 HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        b"GET /api/whoami-v2 HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    ],
)
def test_malformed_requests_get_the_hub_error_shape(server, raw):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head[:100]
    assert b"x-error-message: " in head.lower()
    assert isinstance(json.loads(body)["error"], str)
    _no_traceback(server)


# ---- item 2: slow clients ---------------------------------------------------------------------
def _half_sent(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /api/models/lab/limits HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        socks.append(sock)
    return socks


def _wait_closed(sock: socket.socket, limit_s: float = 30) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``limit_s`` seconds."""
    sock.settimeout(limit_s)
    try:
        return sock.recv(65536) == b"" or sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_half_sent_headers_do_not_lock_out_real_clients(server, tmp_path):
    """1,100 connections with half-sent headers against a server whose open-files limit is 1,024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1500:
        pytest.skip("this test needs 1,500 open files for its own sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1500), hard))
    socks = _half_sent(server.port, 1100)
    try:
        for i in range(3):  # the real client, while every slow connection is still held open by its sender
            path = hf_hub_download(
                "lab/limits",
                "config.json",
                endpoint=server.endpoint,
                token=server.token,
                cache_dir=tmp_path / f"c{i}",
                etag_timeout=30,
            )
            assert json.loads(Path(path).read_text()) == {"a": 1}
    finally:
        for sock in socks:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    _no_traceback(server)


def test_header_timeout_closes_a_stalled_request(server):
    (sock,) = _half_sent(server.port, 1)
    with sock:
        assert _wait_closed(sock)


def test_body_timeout_closes_a_stalled_upload(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/validate-yaml HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + server.token.encode()
            + b'\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"content": '
        )
        assert _wait_closed(sock)


def test_send_timeout_drops_a_client_that_stops_reading(tmp_path):
    hub = start_server(tmp_path / "root", extra_args=("--send-timeout", "1"))
    size = 32 * 1024 * 1024  # more than the socket buffers on both sides hold
    try:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("lab/big")
        api.upload_file(path_or_fileobj=b"\1" * size, path_in_repo="w.bin", repo_id="lab/big")
        with socket.create_connection(("127.0.0.1", hub.port), timeout=30) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(
                b"GET /lab/big/resolve/main/w.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + hub.token.encode()
                + b"\r\n\r\n"
            )
            time.sleep(6)  # read nothing for a while: the server must give up on this client
            received = 0
            try:
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
        assert received < size
        r = requests.get(f"{hub.endpoint}/api/models/lab/big", headers=_auth(hub), timeout=30)
        assert r.status_code == 200
    finally:
        hub.stop()


def test_keep_alive_connections_close_after_a_number_of_requests(server):
    session = requests.Session()
    answers = [
        session.get(f"{server.endpoint}/api/models/lab/limits", headers=_auth(server), timeout=30)
        for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert "close" not in answers[0].headers.get("connection", "").lower()
    assert answers[2].headers.get("connection", "").lower() == "close"


def test_connection_limits_are_options(tmp_path):
    hub = start_server(tmp_path / "root", extra_args=("--max-connections", "4", "--header-timeout", "30"))
    try:
        socks = _half_sent(hub.port, 6)  # two of them must be dropped to make room
        try:
            deadline = time.monotonic() + 30
            closed: set[int] = set()
            while len(closed) < 2 and time.monotonic() < deadline:
                for i, sock in enumerate(socks):
                    sock.settimeout(0.05)
                    try:
                        if sock.recv(1) == b"":
                            closed.add(i)
                    except TimeoutError:
                        pass
                    except OSError:
                        closed.add(i)
            assert closed == {0, 1}  # the oldest half-sent requests
            r = requests.get(f"{hub.endpoint}/api/whoami-v2", headers=_auth(hub), timeout=30)
            assert r.status_code == 200
        finally:
            for sock in socks:
                sock.close()
    finally:
        hub.stop()


# ---- item 10 (tree listing): one pass over the files, whatever the number of folders --------------
class _CountingFiles(dict):
    """A tree whose full scans are counted (iteration is how a listing visits the files)."""

    scans = 0

    def __iter__(self):
        type(self).scans += 1
        return super().__iter__()


def test_recursive_listing_scans_the_files_a_fixed_number_of_times():
    entry = {"oid": "a" * 40, "size": 1, "sha256": "b" * 64, "lfs": False}
    files = _CountingFiles({f"d{i}/sub/f.txt": entry for i in range(2000)})
    items = list_tree(files, "", recursive=True)
    assert len(items) == 2000 * 3
    assert _CountingFiles.scans <= 4  # was one scan per folder (4,000 here): quadratic
    by_path = {i["path"]: i for i in items}
    import hashlib

    expected = hashlib.sha1(f"d7/sub/f.txt\0{'a' * 40}\n".encode(), usedforsecurity=False).hexdigest()
    assert by_path["d7"]["oid"] == by_path["d7/sub"]["oid"] == expected
