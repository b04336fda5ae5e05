"""``medhub serve``: a Hugging Face Hub-compatible HTTP server for air-gapped sites and for tests.

``huggingface_hub``, timm (``hf-hub:`` names) and transformers work against it unchanged once
``HF_ENDPOINT`` points at it (with ``HF_HUB_DISABLE_XET=1``: Xet is answered with 501). Start it with
``medhub serve --root DIR --token-file FILE`` or build the ASGI app with :func:`build_app`.

>>> from medhub.serve import build_app          # doctest: +SKIP
>>> app = build_app("/srv/hub", token_file="/srv/hub-tokens")
"""

from __future__ import annotations

import os
from pathlib import Path

from medhub.serve.app import Hub, create_app
from medhub.serve.auth import Auth, load_secret, read_token_file
from medhub.serve.storage import Store

__all__ = ["Hub", "Store", "build_app", "create_app"]


def build_app(
    root: str | os.PathLike,
    *,
    token_file: str | os.PathLike | None = None,
    public_read: bool = False,
    max_upload_mb: int = 20_480,
    regular_only: bool = False,
):
    """The ASGI app serving the store at ``root`` (created if missing).

    Args:
        root: directory of the store.
        token_file: file with one token per line; without it nobody can write.
        public_read: let requests without a token read (private repos excepted).
        max_upload_mb: largest accepted upload, in MiB.
        regular_only: answer ``uploadMode: regular`` for every file (no LFS, works even with Xet enabled).
    """
    store = Store(root)
    tokens = read_token_file(token_file) if token_file else {}
    auth = Auth(tokens, public_read=public_read, secret=load_secret(Path(store.root)))
    return create_app(Hub(store, auth, max_upload_mb * 1024 * 1024, regular_only))
