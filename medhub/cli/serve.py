"""``medhub serve``: run the Hub-compatible server (uvicorn) until SIGINT or SIGTERM; SIGHUP reloads tokens."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
from pathlib import Path

from medhub.bounds import cli_type
from medhub.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` command."""
    p = subparsers.add_parser(
        "serve",
        help="serve a Hugging Face Hub-compatible API from a local folder (for air-gapped sites)",
        description="Serve a Hub-compatible API: point HF_ENDPOINT at it and set HF_HUB_DISABLE_XET=1. "
        "Writes need a token from --token-file; reads too unless --public-read.",
    )
    p.add_argument("--root", required=True, help="folder holding the repositories (created if missing)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=cli_type("port"), default=8080, help="port (0 picks a free one; default 8080)")
    p.add_argument(
        "--token-file",
        help="file with one token per line ('TOKEN [NAME] [read|write|admin] [NAMESPACE=ROLE ...]', see "
        "docs/serve.md); re-read on SIGHUP; without it the server is read-only",
    )
    p.add_argument("--public-read", action="store_true", help="allow reads without a token")
    p.add_argument("--max-upload-mb", type=cli_type("max_upload_mb"), default=20_480, help="largest upload in MiB (default 20480)")
    p.add_argument(
        "--regular-only",
        action="store_true",
        help="send every file inside the commit (no LFS, so clients with Xet enabled work; commits up to 1 GiB)",
    )
    p.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (query-string values other than sizes and flags, and tokens, are redacted)",
    )
    p.add_argument("--audit-log", help="file every write is appended to (default ROOT/audit.log)")
    p.add_argument(
        "--cache-mb", type=cli_type("cache_mb"), default=128, help="memory for cached commit trees, in MiB (default 128)"
    )
    limits = p.add_argument_group("connection limits (defences against slow or idle clients)")
    limits.add_argument(
        "--max-connections",
        type=cli_type("max_connections"),
        default=1024,
        help="open connections at most; beyond it half-sent requests are dropped first (default 1024)",
    )
    limits.add_argument(
        "--header-timeout", type=cli_type("timeout_s", float), default=10.0, help="seconds to send a request's headers (default 10)"
    )
    limits.add_argument(
        "--body-timeout",
        type=cli_type("timeout_s", float),
        default=30.0,
        help="longest pause in seconds while sending a request body (default 30)",
    )
    limits.add_argument(
        "--send-timeout",
        type=cli_type("timeout_s", float),
        default=60.0,
        help="seconds a client may leave a response unread before it is dropped (default 60)",
    )
    limits.add_argument(
        "--keep-alive-timeout",
        type=cli_type("timeout_s", float),
        default=5.0,
        help="seconds an idle kept-alive connection stays open (default 5)",
    )
    limits.add_argument(
        "--keep-alive-requests",
        type=cli_type("keep_alive_requests"),
        default=1000,
        help="requests served on one connection before it closes (default 1000)",
    )
    p.set_defaults(func=cmd_serve)


def check_serve_inputs(args: argparse.Namespace) -> None:
    """Refuse, before anything is created or bound, a --root that is a file and a token file without tokens."""
    from medhub._io import check_output_dir
    from medhub.serve.auth import read_token_file

    check_output_dir(args.root, "--root")
    if args.audit_log is not None and Path(args.audit_log).is_dir():
        raise UsageError(f"--audit-log {args.audit_log} is a folder; pass the log file to append to")
    if args.token_file is None:
        return
    if not read_token_file(args.token_file):
        if not args.public_read:
            raise UsageError(f"the token file {args.token_file} holds no token, so nobody could read or write; add "
                             "a line 'TOKEN [NAME] [read|write]' (e.g. from 'openssl rand -hex 24'), or pass "
                             "--public-read for a read-only server")
        logging.getLogger(__name__).warning("%s holds no token: the server is read-only", args.token_file)


def cmd_serve(args: argparse.Namespace) -> int:
    """Bind, print ``Serving on http://HOST:PORT`` once listening, serve until a signal."""
    import uvicorn

    from medhub.serve import build_app
    from medhub.serve.auth import RedactingFilter
    from medhub.serve.limits import (
        ACCEPT_BACKLOG,
        ConnectionLimits,
        guarded_protocol,
        quiet_accept_errors,
        raise_fd_limit,
    )

    check_serve_inputs(args)
    limits = raise_fd_limit(
        ConnectionLimits(
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            send_timeout=args.send_timeout,
            keep_alive_timeout=args.keep_alive_timeout,
            keep_alive_requests=args.keep_alive_requests,
            max_connections=args.max_connections,
        )
    )
    redacting = RedactingFilter()
    for handler in logging.getLogger().handlers:  # every line, whichever logger wrote it
        handler.addFilter(redacting)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(
        family, socket.SOCK_STREAM, socket.IPPROTO_TCP
    )  # proto set: asyncio then sets TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; pick another --port (or --host)"
        ) from None
    try:  # the folder is created only once the address is known to work
        app = build_app(
            args.root,
            token_file=args.token_file,
            public_read=args.public_read,
            max_upload_mb=args.max_upload_mb,
            regular_only=args.regular_only,
            audit_log=args.audit_log,
            cache_bytes=args.cache_mb * 1024 * 1024,
        )
    except BaseException:
        sock.close()
        raise
    auth = app.state.hub.auth
    redacting.auth = auth
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    level = logging.getLogger().getEffectiveLevel()
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=level,
        access_log=args.access_log,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=5,
        http=guarded_protocol(limits),
        timeout_keep_alive=limits.keep_alive_timeout,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        backlog=ACCEPT_BACKLOG,
    )
    if args.access_log:  # method, path with a redacted query string, status: never headers
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    # SIGHUP re-reads the token file (a revoked token stops working at once). Installed on the loop
    # once it runs: uvicorn replaces SIGINT/SIGTERM handlers only.

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            import asyncio

            quiet_accept_errors(asyncio.get_running_loop())
            await super().startup(sockets=sockets)
            if hasattr(signal, "SIGHUP"):
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, auth.reload)
            if not self.should_exit:
                print(f"Serving on http://{host}:{port}", flush=True)

        async def shutdown(self, sockets=None) -> None:
            await super().shutdown(sockets=sockets)
            self._captured_signals.clear()  # a requested stop is a clean exit (0), not death by signal

    _Server(config).run(sockets=[sock])
    return 0
