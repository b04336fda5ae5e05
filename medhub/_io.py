"""Atomic file writes and hashing: a crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, durable: bool = True, **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds.

    ``durable``: fsync the data before the rename, so that a power cut never leaves an empty file under the
    final name. ``False`` for outputs that are cheap to rebuild (the static site: a 500-checkpoint site is ~600
    files, and one fsync each dominated its build); readers still never see a half-written file.

    The file gets the permissions a plain ``open()`` would give it (0666 minus the umask, so 0644 by
    default): build outputs such as the static site must be readable by a web server running as another user.

    >>> with atomic_open("/tmp/medhub-example.txt") as f:
    ...     _ = f.write("done")
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a built file gets the mode open() would give it
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, durable: bool = True) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8); ``durable`` as in :func:`atomic_open`."""
    with atomic_open(path, "w", durable=durable, encoding="utf-8") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; ``durable`` as in :func:`atomic_open`."""
    with atomic_open(path, "wb", durable=durable) as handle:
        handle.write(data)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """Refuse, before any work, an output folder that cannot be made: a file stands there or above it, or the
    nearest existing folder is not writable. Creates nothing.

    Args:
        path: the folder a command will create or fill.
        option: how the user gave it (``--out``, ``-o``), for the message.

    Raises:
        PathError: with what stands in the way and what to pass instead.
    """
    from medhub.errors import PathError

    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise PathError(f"{option} {path} is a file, not a folder; pass a new or existing folder", path=str(path))
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PathError(f"{option} {path}: {existing} is a file, so no folder can be made under it; "
                        "pass another path", path=str(path))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PathError(f"{option} {path}: {existing} is not writable; pass a folder you can write to",
                        path=str(path))
    return target


def remove_created(path: Path, existed: bool) -> None:
    """Undo a failed command's output: remove ``path`` if the command created it (``existed`` is False)."""
    import shutil

    if not existed and path.exists():
        shutil.rmtree(path, ignore_errors=True)
