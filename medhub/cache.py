"""medhub's own cache: original downloads and converted checkpoints (safetensors).

Layout under the cache root (``$MEDHUB_HOME``, else ``$XDG_CACHE_HOME/medhub``, else ``~/.cache/medhub``)::

    downloads/<key>/<original file name>      an original file while it is fetched and converted
    converted/<checkpoint id>/<key>.safetensors  the timm state dict converted from it

``<key>`` hashes everything the converted weights depend on (checkpoint id, source location, declared
sha256, format and architecture), so a registry change never serves stale weights and a cache lookup
needs no network. Hub files live in the Hugging Face cache (``$HF_HOME/hub``), shared with timm.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from medhub.schema import WeightSource

logger = logging.getLogger(__name__)

META_KEY = "medhub"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The medhub cache folder: ``cache_dir`` if given, else ``$MEDHUB_HOME`` or ``~/.cache/medhub``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("MEDHUB_HOME"):
        return Path(os.environ["MEDHUB_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medhub"


def hf_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Hub cache to use: ``<cache_dir>/huggingface`` when a cache folder is forced, else the HF default."""
    return None if cache_dir is None else Path(cache_dir).expanduser() / "huggingface"


def source_key(
    entry_id: str, source: WeightSource, arch: str, arch_kwargs: dict[str, Any] | None = None
) -> str:
    """A short stable hash of what converted weights depend on."""
    facts = {
        "id": entry_id,
        "kind": source.kind,
        "url": source.url,
        "repo": source.repo,
        "revision": source.revision,
        "filename": source.filename,
        "format": source.format,
        "sha256": source.sha256,
        "arch": arch,
        "arch_kwargs": arch_kwargs or {},
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def download_path(root: Path, key: str, url: str) -> Path:
    """Where the original file of a url source is downloaded."""
    name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "checkpoint"
    return root / "downloads" / key / name


def converted_path(root: Path, entry_id: str, key: str) -> Path:
    """Where the converted state dict of one (checkpoint, source) pair is cached."""
    return root / "converted" / entry_id / f"{key}.safetensors"


def save_converted(path: Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``state_dict`` as safetensors with ``meta`` (JSON) in its header, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta, default=str)})
        except RuntimeError:  # tensors sharing storage: safetensors wants separate copies
            save_file(
                {k: v.clone() for k, v in tensors.items()},
                tmp,
                metadata={META_KEY: json.dumps(meta, default=str)},
            )
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    logger.info("cached converted weights at %s", path)


def load_converted(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a converted checkpoint and the metadata saved with it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    try:
        meta = json.loads(header.get(META_KEY, "{}"))
    except json.JSONDecodeError:
        meta = {}
    return load_file(str(path)), meta
