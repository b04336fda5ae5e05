"""``medhub serve``: run the Hub-compatible server (uvicorn) until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import socket

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
        help="file with one token per line ('TOKEN [NAME] [read|write]'); without it the server is read-only",
    )
    p.add_argument("--public-read", action="store_true", help="allow reads without a token")
    p.add_argument("--max-upload-mb", type=cli_type("max_upload_mb"), default=20_480, help="largest upload in MiB (default 20480)")
    p.add_argument(
        "--regular-only",
        action="store_true",
        help="send every file inside the commit (no LFS, so clients with Xet enabled work; commits up to 1 GiB)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request (tokens are never logged)")
    p.set_defaults(func=cmd_serve)


def check_serve_inputs(args: argparse.Namespace) -> None:
    """Refuse, before anything is created or bound, a --root that is a file and a token file without tokens."""
    from medhub._io import check_output_dir
    from medhub.serve.auth import read_token_file

    check_output_dir(args.root, "--root")
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

    check_serve_inputs(args)
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
        )
    except BaseException:
        sock.close()
        raise
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
    )
    if args.access_log:  # uvicorn.access logs method, path and status: never headers, so never a token
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)

    class _Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                print(f"Serving on http://{host}:{port}", flush=True)

        async def shutdown(self, sockets=None) -> None:
            await super().shutdown(sockets=sockets)
            self._captured_signals.clear()  # a requested stop is a clean exit (0), not death by signal

    _Server(config).run(sockets=[sock])
    return 0
