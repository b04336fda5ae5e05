"""A real HTTP file server on 127.0.0.1 for download tests: honours ``Range``, logs requests, can break off.

Used as a context manager::

    with FileServer(folder) as server:
        server.url("w.pth")          # http://127.0.0.1:PORT/w.pth
        server.cut["w.pth"] = 1000   # the next GET of w.pth stops after 1000 bytes
        server.requests              # [(path, range header or None), ...]
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        name = self.path.lstrip("/").split("?", 1)[0]
        self.server.requests.append((name, self.headers.get("Range")))
        path = (self.server.root / name).resolve()
        if not path.is_file() or self.server.root not in path.parents:
            self.send_error(404, "not found")
            return
        data = path.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and self.server.ranges:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        cut = self.server.cut.pop(name, None)
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    root: Path
    requests: list[tuple[str, str | None]]
    cut: dict[str, int]
    ranges: bool


class FileServer:
    """Serve ``root`` on a free loopback port for the lifetime of a ``with`` block."""

    def __init__(self, root: Path, *, ranges: bool = True) -> None:
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.root = Path(root).resolve()
        self.httpd.requests = []
        self.httpd.cut = {}
        self.httpd.ranges = ranges
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def requests(self) -> list[tuple[str, str | None]]:
        return self.httpd.requests

    @property
    def cut(self) -> dict[str, int]:
        return self.httpd.cut

    def url(self, name: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/{name}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
