"""The store behind ``medhub serve``: content-addressed blobs, immutable commits, atomically updated refs.

Layout under the root (every write is a temporary file renamed into place, so a crash leaves the old
state or the new one, never half of one)::

    blobs/ab/cd/<sha256>                 file contents, named by their sha256, never rewritten
    tmp/                                 uploads in progress (emptied at start-up; never read)
    locks/<type>/<namespace>/<name>.lock one lock per repo, held while its refs change
    repos/<type>/<namespace>/<name>/
        repo.json                        creation time, privacy
        commits/<id>.json                immutable commits; id = sha1 of the canonical JSON
        refs.json                        {"branches": {...}, "tags": {...}}: the repo exists iff this exists
    trash/                               deleted repos on their way out (emptied at start-up)
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medhub._io import atomic_write_bytes
from medhub.errors import UsageError
from medhub.serve.protocol import (
    GITATTRIBUTES,
    SHA1_HEX,
    SHA256_HEX,
    ProtocolError,
    RepoRef,
    bad_request,
    check_path,
    git_blob_oid,
    lfs_pointer,
)
from medhub.serve.tree import Operation, apply_operations

log = logging.getLogger(__name__)
_CHUNK = 1 << 20
#: Default memory budget of the commit-tree cache (estimated bytes, see :class:`ByteLRU`).
DEFAULT_CACHE_BYTES = 128 * 1024 * 1024
#: Estimated in-memory size of a parsed commit tree per byte of its JSON file: tracemalloc measured
#: 2.6 for 4,000 entries with 50-character paths; 4 leaves room for the allocator's overhead.
_TREE_BYTES_PER_JSON_BYTE = 4


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def file_entry(sha256: str, size: int, *, lfs: bool, data: bytes | None = None) -> dict:
    """A tree entry: sha256 and size of the content, git oid, and whether it is stored as LFS."""
    oid = git_blob_oid(lfs_pointer(sha256, size) if lfs else data if data is not None else b"")
    return {"sha256": sha256, "size": size, "oid": oid, "lfs": lfs}


class ByteLRU:
    """A least-recently-used cache bounded by the sum of its values' estimated sizes, safe for threads.

    Args:
        max_bytes: budget; the oldest entries are dropped until the new one fits. A value larger than
            the whole budget is not cached.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> object | None:
        """The cached value (now the most recent) or None."""
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            self._items.move_to_end(key)
            return found[0]

    def put(self, key: Hashable, value: object, size: int) -> None:
        """Cache ``value`` of about ``size`` bytes, evicting the least recently used entries."""
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            while self._items and self.bytes + size > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped
            self._items[key] = (value, size)
            self.bytes += size

    def __len__(self) -> int:
        return len(self._items)


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Parsing a large commit allocates many small objects; once they are freed, glibc keeps the pages
    unless asked, and the server's resident size would stay at its peak.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()


def _missing_repo(repo: RepoRef) -> ProtocolError:
    return ProtocolError(404, f"repository {repo.type}/{repo.id} not found", "RepoNotFound")


@dataclass(frozen=True)
class Commit:
    """An immutable commit: its full file tree plus metadata."""

    id: str
    parents: tuple[str, ...]
    summary: str
    description: str
    author: str
    date: str
    files: Mapping[str, dict] = field(repr=False)


class BlobWriter:
    """Streams one upload into ``tmp/``, hashing as it goes; publishes it only if size and sha256 match."""

    def __init__(self, store: Store, oid: str, size: int) -> None:
        self.store, self.oid, self.size, self.written = store, oid, size, 0
        fd, name = tempfile.mkstemp(dir=store.root / "tmp", suffix=".part")
        self._path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        """Append a chunk; refuses more bytes than declared."""
        self.written += len(chunk)
        if self.written > self.size:
            raise bad_request(f"upload is larger than its declared size {self.size}")
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> str:
        """Check size and sha256, then rename the blob into place; returns the oid."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self.written != self.size:
            raise bad_request(f"upload has {self.written} bytes but {self.size} were declared")
        if self._hash.hexdigest() != self.oid:
            raise bad_request(
                f"sha256 of the upload is {self._hash.hexdigest()}, not the declared oid {self.oid}"
            )
        self.store._publish(self._path, self.oid)
        return self.oid

    def abort(self) -> None:
        """Drop the partial upload."""
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


class Store:
    """A directory of Hub repositories, safe for concurrent threads.

    Args:
        root: the store's folder (created if missing).
        exclusive: hold ``root/server.lock`` for the store's lifetime and clear the leftovers of a crash
            (``tmp/``, ``trash/``); a second exclusive store on the same root is refused. Use
            ``exclusive=False`` to inspect a store that a server is using.
    """

    def __init__(self, root: str | os.PathLike, *, exclusive: bool = True) -> None:
        self.root = Path(root).resolve()
        for sub in ("blobs", "repos", "locks", "tmp", "trash"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._server_lock = None
        if exclusive:
            self._server_lock = open(self.root / "server.lock", "a")  # noqa: SIM115 - held until exit
            try:
                fcntl.flock(self._server_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._server_lock.close()
                raise UsageError(
                    f"another medhub serve is using {self.root}; stop it or pick another --root"
                ) from None
            for sub in ("tmp", "trash"):  # leftovers of a crash: never visible, removed now
                shutil.rmtree(self.root / sub, ignore_errors=True)
                (self.root / sub).mkdir()
        self._trees = ByteLRU(DEFAULT_CACHE_BYTES)  # full commits (with their file trees)
        self._headers = ByteLRU(DEFAULT_CACHE_BYTES // 16)  # commits without their trees, for history

    def set_cache_bytes(self, max_bytes: int) -> None:
        """Set the memory budget of the commit caches (the tree cache gets 15/16 of it)."""
        self._trees = ByteLRU(max_bytes - max_bytes // 16)
        self._headers = ByteLRU(max_bytes // 16)

    # ---- blobs -------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        """Where the blob with this sha256 lives (whether or not it exists)."""
        if not SHA256_HEX.fullmatch(sha256):
            raise bad_request("an LFS oid must be 64 lowercase hex characters (sha256)")
        return self.root / "blobs" / sha256[:2] / sha256[2:4] / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        """Whether a blob exists (and has ``size`` bytes, when given)."""
        try:
            found = self.blob_path(sha256).stat().st_size
        except FileNotFoundError:
            return False
        return size is None or found == size

    def blob_writer(self, oid: str, size: int) -> BlobWriter:
        """A writer for an upload that must hash to ``oid`` and have ``size`` bytes."""
        self.blob_path(oid)
        return BlobWriter(self, oid, size)

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` (if new) and return its sha256."""
        sha = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha, len(data)):
            writer = BlobWriter(self, sha, len(data))
            try:
                writer.write(data)
                writer.finish()
            finally:
                writer.abort()
        return sha

    def read_blob(self, sha256: str) -> bytes:
        """The whole content of a blob (for small files such as README.md)."""
        return self.blob_path(sha256).read_bytes()

    def _publish(self, tmp: Path, sha256: str) -> None:
        target = self.blob_path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---- repos -------------------------------------------------------------------------------
    def repo_dir(self, repo: RepoRef) -> Path:
        """The directory of a repo (names were validated by :func:`~medhub.serve.protocol.make_repo`)."""
        return self.root / "repos" / repo.type / repo.namespace / repo.name

    def exists(self, repo: RepoRef) -> bool:
        """Whether the repo exists (its refs file is the last thing creation writes)."""
        return (self.repo_dir(repo) / "refs.json").is_file()

    @contextlib.contextmanager
    def lock(self, repo: RepoRef) -> Iterator[None]:
        """Hold the repo's lock (an ``flock``: works across threads and processes)."""
        path = self.root / "locks" / repo.type / repo.namespace / f"{repo.name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_repo_file(self, repo: RepoRef, relative: str) -> bytes:
        """A file of the repo's folder; 404 ``RepoNotFound`` if it is gone (deleted, or being recreated).

        A read that races a delete or a re-creation of the repo then ends in a clean 404, or finds the
        old or the new content: every file is replaced atomically and commits never change.
        """
        try:
            return (self.repo_dir(repo) / relative).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise _missing_repo(repo) from None

    def meta(self, repo: RepoRef) -> dict:
        """``repo.json`` of an existing repo; 404 ``RepoNotFound`` otherwise."""
        if not self.exists(repo):
            raise _missing_repo(repo)
        return json.loads(self._read_repo_file(repo, "repo.json"))

    def create_repo(self, repo: RepoRef, *, private: bool, author: str) -> str:
        """Create a repo with an initial commit holding ``.gitattributes``; 409 if it exists."""
        with self.lock(repo):
            if self.exists(repo):
                raise ProtocolError(409, f"repository {repo.type}/{repo.id} already exists")
            folder = self.repo_dir(repo)
            shutil.rmtree(folder, ignore_errors=True)  # a creation that crashed half way
            (folder / "commits").mkdir(parents=True)
            atomic_write_bytes(
                folder / "repo.json", _canonical({"createdAt": _now(), "private": bool(private)})
            )
            data = GITATTRIBUTES.encode()
            entry = file_entry(self.put_bytes(data), len(data), lfs=False, data=data)
            head = self._write_commit(repo, (), {".gitattributes": entry}, "initial commit", "", author)
            self._write_refs(repo, {"branches": {"main": head}, "tags": {}})
        log.info("created %s/%s", repo.type, repo.id)
        return head

    def delete_repo(self, repo: RepoRef) -> None:
        """Delete a repo (its blobs stay, they may be shared)."""
        with self.lock(repo):
            self.meta(repo)
            os.replace(self.repo_dir(repo), self.root / "trash" / uuid.uuid4().hex)
        shutil.rmtree(self.root / "trash", ignore_errors=True)
        (self.root / "trash").mkdir(exist_ok=True)

    # ---- refs and commits --------------------------------------------------------------------
    def refs(self, repo: RepoRef) -> dict:
        """``{"branches": {name: id}, "tags": {name: id}}``."""
        return json.loads(self._read_repo_file(repo, "refs.json"))

    def _write_refs(self, repo: RepoRef, refs: dict) -> None:
        atomic_write_bytes(self.repo_dir(repo) / "refs.json", _canonical(refs))

    def resolve(self, repo: RepoRef, revision: str) -> tuple[str, str | None]:
        """Commit id and branch name (None for tags and ids) of a revision; 404 ``RevisionNotFound``."""
        refs = self.refs(repo)
        name = revision
        for prefix, kind in (("refs/heads/", "branches"), ("refs/tags/", "tags")):
            if revision.startswith(prefix):
                name = revision[len(prefix) :]
                if name in refs[kind]:
                    return refs[kind][name], name if kind == "branches" else None
        if name in refs["branches"]:
            return refs["branches"][name], name
        if name in refs["tags"]:
            return refs["tags"][name], None
        if SHA1_HEX.fullmatch(revision) and (self.repo_dir(repo) / "commits" / f"{revision}.json").is_file():
            return revision, None
        raise ProtocolError(404, f"revision {revision!r} not found in {repo.id}", "RevisionNotFound")

    def commit(self, repo: RepoRef, commit_id: str, *, with_files: bool = True) -> Commit:
        """Load a commit (cached within a memory budget: commits never change).

        With ``with_files=False`` the commit's ``files`` is empty: enough for a history, and its cache
        entry is small whatever the size of the tree.
        """
        key = (repo, commit_id)
        cached = self._trees.get(key)
        if cached is None and not with_files:
            cached = self._headers.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        raw_bytes = self._read_repo_file(repo, f"commits/{commit_id}.json")
        raw = json.loads(raw_bytes)
        found = Commit(
            commit_id,
            tuple(raw["parents"]),
            raw["summary"],
            raw["description"],
            raw["author"],
            raw["date"],
            raw["files"] if with_files else {},
        )
        if with_files:
            self._trees.put(key, found, _TREE_BYTES_PER_JSON_BYTE * len(raw_bytes))
        else:
            header = 400 + 2 * (len(found.summary) + len(found.description) + len(found.author))
            self._headers.put(key, found, header)
        big = len(raw_bytes) > 256 * 1024
        del raw, raw_bytes
        if big:
            _release_free_memory()
        return found

    def _write_commit(
        self,
        repo: RepoRef,
        parents: tuple[str, ...],
        files: dict,
        summary: str,
        description: str,
        author: str,
    ) -> str:
        body = {
            "repo": f"{repo.type}/{repo.id}",
            "parents": list(parents),
            "summary": summary,
            "description": description,
            "author": author,
            "date": _now(),
            "files": files,
        }
        data = _canonical(body)
        commit_id = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        path = self.repo_dir(repo) / "commits" / f"{commit_id}.json"
        if not path.exists():
            atomic_write_bytes(path, data)
        return commit_id

    def create_commit(
        self,
        repo: RepoRef,
        branch: str,
        operations: list[Operation],
        *,
        summary: str,
        description: str = "",
        author: str,
        parent: str | None = None,
    ) -> str:
        """Apply ``operations`` on top of ``branch`` and move the branch; 412 if ``parent`` is not its head."""
        with self.lock(repo):
            head, head_branch = self.resolve(repo, branch)
            if head_branch is None:
                raise bad_request(f"{branch!r} is not a branch: commits go to a branch")
            if parent is not None and parent != head:
                raise ProtocolError(412, f"parentCommit {parent} is not the head of {branch!r} ({head})")
            files = apply_operations(dict(self.commit(repo, head).files), operations)
            for op in operations:
                if op.data is not None:
                    self.put_bytes(op.data)
            new = self._write_commit(repo, (head,), files, summary, description, author)
            refs = self.refs(repo)
            refs["branches"][head_branch] = new
            self._write_refs(repo, refs)
        log.info("commit %s on %s/%s@%s", new, repo.type, repo.id, head_branch)
        return new

    def history(
        self, repo: RepoRef, commit_id: str, limit: int = 10_000, *, with_files: bool = True
    ) -> list[Commit]:
        """Commits from ``commit_id`` back to the first one (first parents), newest first.

        ``with_files=False`` leaves each commit's ``files`` empty (see :meth:`commit`).
        """
        out: list[Commit] = []
        current: str | None = commit_id
        while current and len(out) < limit:
            commit = self.commit(repo, current, with_files=with_files)
            out.append(commit)
            current = commit.parents[0] if commit.parents else None
        return out

    def set_ref(self, repo: RepoRef, kind: str, name: str, target: str | None, *, must_exist: bool) -> None:
        """Create (``target`` given) or delete (``target`` None) a branch or tag; 409 / 404 as appropriate."""
        with self.lock(repo):
            refs = self.refs(repo)
            present = name in refs[kind]
            if target is not None and present:
                raise ProtocolError(
                    409, f"{kind[:-1] if kind == 'tags' else 'branch'} {name!r} already exists"
                )
            if target is None and not present:
                code = "RevisionNotFound" if must_exist else None
                raise ProtocolError(
                    404, f"{name!r} is not a {kind[:-1] if kind == 'tags' else 'branch'}", code
                )
            if target is None and kind == "branches" and name == "main":
                raise bad_request("the main branch cannot be deleted")
            if target is None:
                del refs[kind][name]
            else:
                refs[kind][name] = target
            self._write_refs(repo, refs)

    # ---- checking ----------------------------------------------------------------------------
    def fsck(
        self,
        *,
        quick: bool = False,
        progress: Callable[[int, int, int, int], None] | None = None,
        quarantine: bool = False,
    ) -> list[str]:
        """Problems found in the whole store, each with how to repair it (empty when all is consistent).

        Checks every repo's refs (they name stored commits), every commit (its file hashes to its id,
        which is the sha1 of its canonical JSON; its parents exist; every path is valid; every regular
        file's git oid matches its content) and every blob (present with the recorded size, and unless
        ``quick``, content whose sha256 is the blob's name).

        Args:
            quick: only check that blobs exist with the right size (no reading of contents).
            progress: called as ``progress(blobs_done, blobs_total, bytes_done, bytes_total)`` while
                blobs are hashed.
            quarantine: move blobs whose content is corrupt to ``quarantine/`` so that clients upload
                the file again (the server then reports it as missing in preupload).
        """
        problems: list[str] = []
        used: dict[str, tuple[int, str, bool]] = {}  # sha256 -> (size, where, regular-file oid to check)
        base = self.root / "repos"
        for refs_file in sorted(base.glob("*/*/*/refs.json")):
            rtype, ns, name = refs_file.parent.relative_to(base).parts
            problems += self._check_repo(RepoRef(rtype, ns, name), used)
        blobs = sorted(used.items())
        total = sum(size for _, (size, _, _) in blobs)
        done = 0
        for number, (sha, (size, where, oid)) in enumerate(blobs, 1):
            problem = self._check_blob(sha, size, where, oid, quick=quick, quarantine=quarantine)
            if problem:
                problems.append(problem)
            done += size
            if progress is not None:
                progress(number, len(blobs), done, total)
        return problems

    def _check_repo(self, repo: RepoRef, used: dict[str, tuple[int, str, bool]]) -> list[str]:
        """Refs and commits of one repo; records the blobs its commits use in ``used``."""
        problems: list[str] = []
        where = f"{repo.type}/{repo.id}"
        restore = f"restore repos/{where} from a backup"
        try:
            refs = self.refs(repo)
            heads = {**refs["branches"], **{f"tag {k}": v for k, v in refs["tags"].items()}}
        except (ProtocolError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return [f"{where}: refs.json is unreadable ({type(exc).__name__}); repair: {restore}"]
        commit_dir = self.repo_dir(repo) / "commits"
        stored = {p.stem for p in commit_dir.glob("*.json")}
        for ref, head in sorted(heads.items()):
            if head not in stored:
                problems.append(f"{where}: {ref} points to missing commit {head}; repair: {restore}")
        for commit_id in sorted(stored):
            data = (commit_dir / f"{commit_id}.json").read_bytes()
            label = f"{where}@{commit_id[:12]}"
            if hashlib.sha1(data, usedforsecurity=False).hexdigest() != commit_id:
                problems.append(f"{label}: commit file does not hash to its id (altered); repair: {restore}")
                continue
            try:
                body = json.loads(data)
                parents, files = body["parents"], body["files"]
                missing = [p for p in parents if p not in stored]
                if missing:
                    problems.append(f"{label}: parent commit {missing[0]} is missing; repair: {restore}")
                for path, entry in files.items():
                    problems += self._check_entry(label, path, entry, used, restore)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                problems.append(f"{label}: malformed commit ({type(exc).__name__}: {exc}); repair: {restore}")
        return problems

    @staticmethod
    def _check_entry(label: str, path: str, entry: dict, used: dict, restore: str) -> list[str]:
        try:
            check_path(path)
        except ProtocolError as err:
            return [f"{label}: {err.message}; repair: delete the file in a new commit (HfApi().delete_file)"]
        sha, size, lfs = entry["sha256"], entry["size"], entry["lfs"]
        if not isinstance(sha, str) or not SHA256_HEX.fullmatch(sha) or type(size) is not int:
            return [f"{label}: {path!r} has a malformed entry; repair: {restore}"]
        if lfs and entry["oid"] != git_blob_oid(lfs_pointer(sha, size)):
            return [f"{label}: {path!r} has an LFS oid that does not match its sha256; repair: {restore}"]
        previous, regular_oid = used.get(sha), "" if lfs else entry["oid"]
        if previous is None:
            used[sha] = (size, f"{label}:{path}", regular_oid)
        elif regular_oid and not previous[2]:
            used[sha] = (previous[0], previous[1], regular_oid)
        return []

    def _check_blob(
        self, sha: str, size: int, where: str, oid: str | bool, *, quick: bool, quarantine: bool
    ) -> str | None:
        """One blob: present with ``size`` bytes and (unless ``quick``) a sha256 equal to its name."""
        path = self.blob_path(sha)
        again = f"upload {where.rsplit(':', 1)[-1]!r} again, or restore blobs/{sha[:2]}/{sha[2:4]}/{sha} from a backup"
        try:
            found = path.stat().st_size
        except FileNotFoundError:
            return f"blob {sha} is missing (used by {where}); repair: {again}"
        if found != size:
            return f"blob {sha} has {found} bytes, not {size} (used by {where}); repair: {self._quarantine(path, quarantine)}{again}"
        if quick:
            return None
        digest, sha1 = hashlib.sha256(), None
        if oid:  # a regular file: its git blob oid is checked too
            sha1 = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                if sha1 is not None:
                    sha1.update(chunk)
        if digest.hexdigest() != sha:
            return (
                f"blob {sha} is corrupt: its content hashes to {digest.hexdigest()} (used by {where}); "
                f"repair: {self._quarantine(path, quarantine)}{again}"
            )
        if sha1 is not None and sha1.hexdigest() != oid:
            return f"{where}: git oid {oid} does not match the content; repair: upload the file again"
        return None

    def _quarantine(self, path: Path, enabled: bool) -> str:
        """Move a bad blob to ``quarantine/`` when ``enabled``; returns the words for the repair hint."""
        if not enabled:
            return "run medhub store fsck --quarantine, then "
        target = self.root / "quarantine" / path.name
        target.parent.mkdir(exist_ok=True)
        os.replace(path, target)
        return f"moved to {target}; now "
