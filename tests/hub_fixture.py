"""The test Hub: a real ``medhub serve`` on 127.0.0.1, shared by every Hub test of the session.

``huggingface_hub`` reads ``HF_ENDPOINT`` when it is imported, so this module picks a free loopback port
and sets ``HF_ENDPOINT`` as soon as it is imported (``tests/conftest.py`` imports it before anything
imports huggingface_hub). An ``HF_ENDPOINT`` already pointing at 127.0.0.1/localhost with a port is kept
(the server then starts on that port); any other value is replaced, so that no test reaches the internet.
For the same reason (paths fixed at import) ``HF_HOME`` is set to a temporary folder for the session, so
tests never read the user's token or write to the user's Hugging Face cache.

Fixtures:
    hub_server: session-wide server (temporary root and token file): ``.endpoint``, ``.token``, ``.root``.
    hub: function-scoped; sets ``HF_TOKEN`` and ``HF_ENDPOINT`` for the test and returns the server.
    Both are shared by the whole session: never stop or restart them, and use fresh repo ids.

Helpers for tests that need a server of their own (restarts, crashes, other options):
:func:`start_server` and :class:`HubServer`. Use :meth:`HubServer.new_repo_id` for repo ids that no
other test uses.

>>> def test_upload(hub):                                      # doctest: +SKIP
...     from huggingface_hub import HfApi
...     repo = hub.new_repo_id("upload")
...     HfApi().create_repo(repo)
"""

from __future__ import annotations

import atexit
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

_LOOPBACK = ("127.0.0.1", "localhost")
_counter = itertools.count()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _claim_endpoint() -> int:
    current = urlsplit(os.environ.get("HF_ENDPOINT", ""))
    if current.hostname in _LOOPBACK and current.port:
        return current.port
    port = free_port()
    os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"
    return port


def _private_hf_home() -> None:
    """huggingface_hub also fixes its cache and token paths at import: point them at a temporary folder."""
    home = tempfile.mkdtemp(prefix="medhub-test-hf-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ["HF_HOME"] = home
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "HF_XET_CACHE", "HF_ASSETS_CACHE"):
        os.environ.pop(name, None)


PORT = _claim_endpoint()
_private_hf_home()
ENDPOINT = os.environ["HF_ENDPOINT"].rstrip("/")


@dataclass
class HubServer:
    """A running ``medhub serve`` subprocess; its log (never containing the token) is ``log``."""

    root: Path
    token: str
    token_file: Path
    port: int
    log: Path
    process: subprocess.Popen
    extra_args: tuple[str, ...] = ()
    endpoint: str = field(init=False)

    def __post_init__(self) -> None:
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def new_repo_id(self, prefix: str = "repo", namespace: str = "test-org") -> str:
        """A repo id no other test of this session uses."""
        return f"{namespace}/{prefix}-{os.getpid()}-{next(_counter)}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send ``sig`` and wait for the exit code (SIGKILL after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode

    def restart(self, timeout: float = 60) -> HubServer:
        """Stop (SIGTERM) if running, then start again on the same root, port and token."""
        self.stop()
        return start_server(
            self.root, port=self.port, token=self.token, extra_args=self.extra_args, timeout=timeout
        )


def start_server(
    root: Path,
    *,
    port: int = 0,
    token: str | None = None,
    extra_args: tuple[str, ...] | list[str] = (),
    timeout: float = 60,
    fd_limit: int | None = None,
    token_lines: str | None = None,
    token_mode: int = 0o600,
) -> HubServer:
    """Start ``medhub serve`` on 127.0.0.1 and wait until it prints ``Serving on``.

    Args:
        root: store folder (created if missing); the token file and the log go beside it.
        port: port, 0 for any free one.
        token: write token; a random one by default.
        extra_args: more ``medhub serve`` options, e.g. ``("--public-read",)``.
        timeout: seconds to wait for the server to listen.
        fd_limit: the server's open-files limit (soft and hard), as a service manager sets it.
        token_lines: the token file's content (default: the write token alone on one line).
        token_mode: the token file's permissions.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    token = token or f"medhub-test-{secrets.token_hex(16)}"
    token_file = root.parent / f"{root.name}.tokens"
    token_file.write_text(token_lines if token_lines is not None else token + "\n", encoding="utf-8")
    token_file.chmod(token_mode)
    log = root.parent / f"{root.name}.log"
    command = [sys.executable, "-m", "medhub", "serve", "--root", str(root), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--token-file", str(token_file), *extra_args]
    handle = open(log, "ab")  # noqa: SIM115 - the child keeps writing to it
    offset = handle.tell()  # a restart appends: only read what this process writes
    def limit_files() -> None:
        if fd_limit:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    process = subprocess.Popen(
        command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ}, preexec_fn=limit_files
    )
    handle.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log, "rb") as reader:
            reader.seek(offset)
            text = reader.read().decode("utf-8", "replace")
        for line in text.splitlines():
            if line.startswith("Serving on http://"):
                real_port = int(line.rsplit(":", 1)[1])
                return HubServer(root, token, token_file, real_port, log, process, tuple(extra_args))
        if process.poll() is not None:
            raise RuntimeError(f"medhub serve exited with {process.returncode}:\n{text[-2000:]}")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"medhub serve did not print 'Serving on' within {timeout}s; log: {log}")


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory):
    """One ``medhub serve`` for the whole session, on the port ``HF_ENDPOINT`` names."""
    server = start_server(tmp_path_factory.mktemp("hub") / "root", port=PORT)
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    """The session Hub, with ``HF_TOKEN`` and ``HF_ENDPOINT`` set for this test."""
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)
    return hub_server
