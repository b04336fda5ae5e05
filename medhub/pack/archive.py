"""The pack archive: a plain POSIX tar whose first member is ``manifest.json``, written byte-reproducibly.

Writing: members in a fixed order (``manifest.json``, then the rest sorted by path), every header with the
same mtime (the pack's creation time), uid/gid 0, no user or group names, mode 0644, PAX format with integer
mtimes (so no time-bearing PAX records). Same files + same creation time -> same bytes.

Reading: :func:`verify_archive` checks the whole archive against its manifest and returns where each
member's bytes are; it writes nothing. It refuses, naming the member: absolute paths, ``..`` parts,
backslashes or control characters in names, anything that is not a regular file (symbolic and hard links,
device files, FIFOs, directories), duplicate members, members the manifest does not list (and listed ones
that are missing), sizes above :data:`MAX_MEMBER_BYTES` or different from the manifest's, and contents whose
sha256 differs from the manifest's. The bytes are hashed again while they are copied out
(:func:`copy_member`), so a file changed between the check and the copy is caught too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from medhub.errors import ArchiveError

MANIFEST = "manifest.json"
FORMAT = "medhub-pack"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_MEMBER_BYTES = 64 * 1024**3  # 64 GiB: far above any checkpoint of the registry (ViT-L: 1.2 GB)
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Member:
    """One verified member: its path in the archive, size in bytes, sha256, and where its data starts."""

    path: str
    size: int
    sha256: str
    offset: int


@dataclass(frozen=True)
class VerifiedArchive:
    """An archive whose every member matched its manifest (see :func:`verify_archive`)."""

    path: Path
    manifest: dict[str, Any]
    members: dict[str, Member]


# ---- writing -----------------------------------------------------------------------------------------------


def write_archive(out: Path, manifest: dict[str, Any], files: dict[str, Path], mtime: int) -> str:
    """Write the tar atomically: ``manifest.json`` first, then ``files`` sorted by archive path.

    Args:
        out: the archive to write (replaced atomically).
        manifest: the manifest (serialised with sorted keys).
        files: ``{path in the archive: file on disk}``.
        mtime: seconds since the epoch written into every header.

    Returns:
        The sha256 of the whole archive (to publish beside it).
    """
    from medhub._io import atomic_open

    data = manifest_bytes(manifest)
    with atomic_open(out, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_header(MANIFEST, len(data), mtime), io.BytesIO(data))
        for name in sorted(files):
            path = files[name]
            with open(path, "rb") as handle:
                tar.addfile(_header(name, path.stat().st_size, mtime), handle)
    return sha256_of(out)[1]


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The manifest as written into the archive (sorted keys, 2-space indent, final newline)."""
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def sha256_of(path: Path) -> tuple[int, str]:
    """``(size, sha256)`` of a file."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _header(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


# ---- reading -----------------------------------------------------------------------------------------------


def verify_archive(path: str | os.PathLike) -> VerifiedArchive:
    """Check every member of the archive against its manifest; write nothing.

    Raises:
        ArchiveError: the archive is not a medhub pack, is truncated, tampered with or hostile (the
            message names the member and the reason).
    """
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"{path}: no such archive file; check the path", path=path)
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            return _verify(path, raw, tar)
    except (tarfile.TarError, EOFError) as exc:
        raise _refused(
            path, f"it is not a readable tar archive ({exc}); it may be truncated or damaged"
        ) from None


def _verify(path: Path, raw: IO[bytes], tar: tarfile.TarFile) -> VerifiedArchive:
    infos = _iter_members(path, tar)
    first = next(infos, None)
    if first is None or first.name != MANIFEST:
        found = "an empty archive" if first is None else f"'{first.name}'"
        raise _refused(path, f"its first member must be {MANIFEST}, found {found}; it is not a medhub pack")
    _check_size(path, first.name, first.size, MAX_MANIFEST_BYTES)
    manifest = _parse_manifest(path, _read_member(path, raw, first))
    listed = {m["path"]: m for m in manifest["members"]}
    members: dict[str, Member] = {}
    for info in infos:
        if info.name in members or info.name == MANIFEST:
            raise _refused(path, f"member '{info.name}' appears twice")
        if info.name not in listed:
            raise _refused(path, f"member '{info.name}' is not listed in the manifest")
        expected = listed[info.name]
        if info.size != expected["size"]:
            raise _refused(
                path, f"member '{info.name}' has {info.size} bytes, the manifest says {expected['size']}"
            )
        size, digest = _hash_member(path, raw, info)
        if size != info.size:
            raise _refused(path, f"member '{info.name}' is truncated ({size} of {info.size} bytes)")
        if digest != expected["sha256"]:
            raise _refused(
                path, f"member '{info.name}' has sha256 {digest}, the manifest says {expected['sha256']}"
            )
        members[info.name] = Member(info.name, info.size, digest, info.offset_data)
    missing = sorted(set(listed) - set(members))
    if missing:
        raise _refused(
            path, f"members listed in the manifest are missing (truncated archive?): {', '.join(missing[:5])}"
        )
    _check_end(path, raw, tar.offset)
    return VerifiedArchive(path, manifest, members)


def _check_end(path: Path, raw: IO[bytes], offset: int) -> None:
    """After the last member: only zero bytes, at least the two end-of-archive blocks, to a whole record.

    POSIX.1 ustar ends an archive with two 512-byte zero blocks; :func:`write_archive` (tarfile) pads it to a
    multiple of ``tarfile.RECORDSIZE`` (10240 bytes). Anything else is a cut-off download or appended data.
    """
    size = raw.seek(0, os.SEEK_END)
    if any(chunk.strip(b"\0") for chunk in _chunks(raw, offset, size - offset)):
        raise _refused(path, f"it holds data after the end of its last member (byte {offset})")
    if size - offset < 2 * tarfile.BLOCKSIZE or size % tarfile.RECORDSIZE:
        raise _refused(path, f"it ends at byte {size}, before the end-of-archive blocks (truncated?)")


def _iter_members(path: Path, tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Members in archive order, each refused at its header if its name, type or size is unsafe."""
    while True:
        info = tar.next()
        if info is None:
            return
        reason = unsafe_name(info.name)
        if reason:
            raise _refused(path, f"member '{info.name}' {reason}")
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):  # not sparse or contiguous variants either
            raise _refused(
                path, f"member '{info.name}' is {_kind(info)}; a medhub pack holds regular files only"
            )
        _check_size(path, info.name, info.size, MAX_MEMBER_BYTES)
        yield info


def unsafe_name(name: str) -> str | None:
    """Why ``name`` may not be written below a folder (absolute, ``..``, ...), or None when it is safe."""
    if not name or len(name) > 1024:
        return "has an empty or over-long name"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "has an absolute path"
    if "\\" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "has a backslash or a control character in its name"
    parts = name.split("/")
    if ".." in parts:
        return "has a '..' part (path traversal)"
    if any(p in ("", ".") for p in parts):
        return "has an empty or '.' part in its path"
    return None


def _kind(info: tarfile.TarInfo) -> str:
    if info.issym():
        return f"a symbolic link (to '{info.linkname}')"
    if info.islnk():
        return f"a hard link (to '{info.linkname}')"
    if info.ischr() or info.isblk():
        return "a device file"
    if info.isfifo():
        return "a FIFO"
    if info.isdir():
        return "a directory"
    return f"of tar type {info.type!r}"


def _check_size(path: Path, name: str, size: int, limit: int) -> None:
    if size < 0 or size > limit:
        raise _refused(
            path, f"member '{name}' declares {size} bytes, more than the {limit} a member may have"
        )


def _read_member(path: Path, raw: IO[bytes], info: tarfile.TarInfo) -> bytes:
    raw.seek(info.offset_data)
    data = raw.read(info.size)
    if len(data) != info.size:
        raise _refused(path, f"member '{info.name}' is truncated ({len(data)} of {info.size} bytes)")
    return data


def _hash_member(path: Path, raw: IO[bytes], info: tarfile.TarInfo) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    for chunk in _chunks(raw, info.offset_data, info.size):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _chunks(raw: IO[bytes], offset: int, size: int) -> Iterator[bytes]:
    raw.seek(offset)
    left = size
    while left > 0:
        chunk = raw.read(min(_CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


def _parse_manifest(path: Path, data: bytes) -> dict[str, Any]:
    """The manifest, with its ``members`` list checked (paths, sizes, sha256s)."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refused(path, f"{MANIFEST} is not valid JSON ({exc})") from None
    except RecursionError:
        raise _refused(path, f"{MANIFEST} nests too deeply to be a medhub manifest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _refused(path, f"{MANIFEST} does not describe a {FORMAT} archive")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise _refused(
            path,
            f"{MANIFEST} has format version {manifest.get('format_version')!r}; this medhub reads version "
            f"{FORMAT_VERSION} (upgrade medhub)",
        )
    members = manifest.get("members")
    if not isinstance(members, list):
        raise _refused(path, f"{MANIFEST} has no 'members' list")
    seen = set()
    for item in members:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise _refused(path, f"{MANIFEST} lists a member without a path")
        name, size, digest = item["path"], item.get("size"), item.get("sha256")
        reason = unsafe_name(name)
        if reason or name == MANIFEST or name in seen:
            raise _refused(path, f"{MANIFEST} lists member '{name}', which {reason or 'appears twice'}")
        if not isinstance(size, int) or isinstance(size, bool):
            raise _refused(path, f"{MANIFEST} gives member '{name}' no integer size")
        _check_size(path, name, size, MAX_MEMBER_BYTES)
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise _refused(path, f"{MANIFEST} gives member '{name}' no sha256")
        seen.add(name)
    return manifest


def _refused(path: Path, reason: str) -> ArchiveError:
    return ArchiveError(
        f"{path}: refused, nothing was written: {reason}. Ask for the pack again (made with medhub pack) "
        "and compare its sha256 with the one printed when it was made",
        path=path,
    )


# ---- copying a verified member out -------------------------------------------------------------------------


def copy_member(archive: VerifiedArchive, name: str, out: IO[bytes]) -> None:
    """Copy one verified member into ``out``, hashing it again; raises if the archive changed meanwhile."""
    member = archive.members[name]
    digest, size = hashlib.sha256(), 0
    with open(archive.path, "rb") as raw:
        for chunk in _chunks(raw, member.offset, member.size):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    if size != member.size or digest.hexdigest() != member.sha256:
        raise ArchiveError(
            f"{archive.path}: member '{name}' changed while it was being copied out (the archive was modified "
            "during the import); nothing from it was kept: run medhub unpack again on an unchanging copy",
            path=archive.path,
        )


def member_bytes(archive: VerifiedArchive, name: str) -> bytes:
    """The content of a (small) verified member."""
    buffer = io.BytesIO()
    copy_member(archive, name, buffer)
    return buffer.getvalue()
