"""``medhub serve``: a Hugging Face Hub-compatible HTTP server for air-gapped sites and for tests.

``huggingface_hub``, timm (``hf-hub:`` names) and transformers work against it unchanged once
``HF_ENDPOINT`` points at it (with ``HF_HUB_DISABLE_XET=1``: Xet is answered with 501). Start it with
``medhub serve --root DIR --token-file FILE`` or build the ASGI app with :func:`build_app`.

>>> from medhub.serve import build_app          # doctest: +SKIP
>>> app = build_app("/srv/hub", token_file="/srv/hub-tokens")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from medhub.serve.app import Hub, create_app
from medhub.serve.audit import AuditLog
from medhub.serve.auth import Auth, load_secret, read_token_file, token_file_warning
from medhub.serve.storage import DEFAULT_CACHE_BYTES, Store

log = logging.getLogger(__name__)

__all__ = ["Hub", "Store", "build_app", "create_app"]


def build_app(
    root: str | os.PathLike,
    *,
    token_file: str | os.PathLike | None = None,
    public_read: bool = False,
    max_upload_mb: int = 20_480,
    regular_only: bool = False,
    audit_log: str | os.PathLike | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
):
    """The ASGI app serving the store at ``root`` (created if missing).

    Args:
        root: directory of the store.
        token_file: token file (see :mod:`medhub.serve.auth`); without it nobody can write.
        public_read: let requests without a token read (private repos excepted).
        max_upload_mb: largest accepted upload, in MiB.
        regular_only: answer ``uploadMode: regular`` for every file (no LFS, works even with Xet enabled).
        audit_log: file that every write is appended to (default ``root/audit.log``).
        cache_bytes: memory budget of the commit caches, in bytes.
    """
    store = Store(root)
    store.set_cache_bytes(cache_bytes)
    tokens = read_token_file(token_file) if token_file else {}
    warning = token_file_warning(token_file) if token_file else None
    if warning:
        log.warning(warning)
    auth = Auth(tokens, public_read=public_read, secret=load_secret(Path(store.root)), token_file=token_file)
    audit = AuditLog(audit_log if audit_log is not None else Path(store.root) / "audit.log")
    return create_app(Hub(store, auth, max_upload_mb * 1024 * 1024, regular_only, audit))
