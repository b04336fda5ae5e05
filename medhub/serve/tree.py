"""Trees of files as the Hub shows them: applying commit operations, listing folders, entry JSON."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from medhub.serve.protocol import ProtocolError, bad_request, lfs_pointer


@dataclass
class Operation:
    """One change in a commit: ``add`` (with ``entry``), ``delete`` or ``delete_folder``."""

    kind: str
    path: str
    entry: dict | None = None
    data: bytes | None = field(default=None, repr=False)  # content to store once the commit is accepted


def pointer_size(entry: dict) -> int:
    return len(lfs_pointer(entry["sha256"], entry["size"]))


def file_item(path: str, entry: dict) -> dict:
    item = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
    if entry["lfs"]:
        item["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": pointer_size(entry)}
    return item


def folder_oids(files: dict, folders: set[str] | list[str]) -> dict[str, str]:
    """The oid of each folder in ``folders`` that holds files (absent ones are left out), in one pass.

    A folder's oid is the sha1 of ``"{path}\\0{oid}\\n"`` over its files at every depth, in sorted path
    order. Each file updates the folders above it, so the cost is linear in files times depth
    (one scan per folder would make a recursive listing quadratic).
    """
    digests = {f: hashlib.sha1(usedforsecurity=False) for f in folders}
    for path in sorted(files):
        cut = path.find("/")
        while cut >= 0:
            digest = digests.get(path[:cut])
            if digest is not None:
                digest.update(f"{path}\0{files[path]['oid']}\n".encode())
            cut = path.find("/", cut + 1)
    empty = hashlib.sha1(usedforsecurity=False).hexdigest()
    return {f: d.hexdigest() for f, d in digests.items() if d.hexdigest() != empty}


def dir_item(path: str, oid: str) -> dict:
    """A tree entry for a folder."""
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


def list_tree(files: dict, base: str, recursive: bool) -> list[dict]:
    """Entries under ``base`` (all levels when ``recursive``); 404 ``EntryNotFound`` if it is not a folder."""
    prefix = base + "/" if base else ""
    found_files, folders = [], set()
    for path in files:
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :]
        if recursive or "/" not in rest:
            found_files.append(path)
        if recursive:
            cut = rest.find("/")
            while cut >= 0:
                folders.add(prefix + rest[:cut])
                cut = rest.find("/", cut + 1)
        elif "/" in rest:
            folders.add(prefix + rest[: rest.index("/")])
    if base and not found_files and not folders:
        raise ProtocolError(404, f"folder {base!r} not found", "EntryNotFound")
    oids = folder_oids({p: files[p] for p in files if p.startswith(prefix)}, folders)
    items = [dir_item(f, oids[f]) for f in folders] + [file_item(p, files[p]) for p in found_files]
    return sorted(items, key=lambda item: item["path"])


def apply_operations(files: dict, operations: list[Operation]) -> dict:
    """The tree after ``operations``; 404 ``EntryNotFound`` for a missing deletion, 400 for a file/folder clash."""
    for op in operations:
        if op.kind == "add":
            files[op.path] = op.entry
        elif op.kind == "delete":
            if files.pop(op.path, None) is None:
                raise ProtocolError(404, f"cannot delete {op.path!r}: no such file", "EntryNotFound")
        else:
            prefix = op.path.rstrip("/") + "/"
            for path in [p for p in files if p.startswith(prefix)]:
                del files[path]
    folders = {p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/") + 1)}
    clash = folders.intersection(files)
    if clash:
        raise bad_request(f"{sorted(clash)[0]!r} would be both a file and a folder")
    return files
