"""Protocol-level facts shared by the store and the routes: errors, name validation, git object ids.

Every name that comes from a request (repo type, namespace, repo name, revision, path in repo) is
validated here before it reaches the store. Only repo namespaces and names ever become directory
names on disk; paths in a repo never do (file content is addressed by its sha256).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

#: URL segment of each repo type (``/api/{t}s/...``) and the prefix of its resolve URLs.
REPO_TYPES = {"models": "", "datasets": "datasets/"}
#: Namespaces that would make resolve URLs ambiguous.
RESERVED_NAMESPACES = {"api", "models", "datasets", "spaces", "resolve", "lfs"}
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
#: Patterns the initial ``.gitattributes`` sends to LFS (as on huggingface.co, shortened).
LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".onnx",
    ".npy",
    ".npz",
    ".pkl",
    ".pickle",
    ".msgpack",
    ".tar",
    ".gz",
    ".zip",
    ".zst",
    ".xz",
    ".tflite",
    ".parquet",
    ".arrow",
    ".model",
    ".joblib",
)
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)
REGULAR_MAX_BYTES = 10 * 1024 * 1024  # larger files always go through LFS, as on the real Hub

# Anchored with ``\Z`` and applied with ``fullmatch``: ``$`` also matches before a trailing newline.
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?\Z")
_REF = re.compile(r"^[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*\Z")
SHA1_HEX = re.compile(r"^[0-9a-f]{40}\Z")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}\Z")
MAX_PATH_CHARS = 1024
#: Folder names the huggingface_hub client refuses in a commit (``huggingface_hub.utils._paths.FORBIDDEN_FOLDERS``):
#: ``.git/`` would plant git configuration (and hooks) in a checkout that ``snapshot_download(local_dir=...)``
#: writes into, ``.cache/`` the client's own download metadata. Compared case-insensitively, as on macOS
#: and Windows file systems.
FORBIDDEN_FOLDERS = (".git", ".cache")


class ProtocolError(Exception):
    """A request the server refuses: HTTP status, ``X-Error-Code`` (or None) and a one-line message."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def bad_request(message: str) -> ProtocolError:
    """A 400 answer."""
    return ProtocolError(400, message)


def field_str(value: object, what: str, *, optional: bool = False, max_chars: int = 10_000) -> str | None:
    """A string field of a request (None allowed when ``optional``); 400 for any other type."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > max_chars:
        raise bad_request(f"{what} must be a string of at most {max_chars} characters")
    return value


def field_int(value: object, what: str, *, optional: bool = False) -> int | None:
    """A non-negative integer field (``true`` is refused: JSON booleans are not sizes); 400 otherwise."""
    if value is None and optional:
        return None
    if type(value) is not int or value < 0 or value >= 1 << 63:
        raise bad_request(f"{what} must be a non-negative integer")
    return value


def field_bool(value: object, what: str) -> bool | None:
    """A boolean field or None; 400 for anything else (``"false"`` is not false)."""
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"{what} must be true or false")
    return value


@dataclass(frozen=True)
class RepoRef:
    """A validated repository address: ``type`` is ``models`` or ``datasets``."""

    type: str
    namespace: str
    name: str

    @property
    def id(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    @property
    def singular(self) -> str:
        """``model`` or ``dataset``, as the client spells ``repo_type``."""
        return self.type[:-1]


def check_name(value: object, what: str) -> str:
    """A namespace or repo name: letters, digits, ``-``, ``_``, ``.``; no ``..`` or ``--``."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value or "--" in value:
        raise bad_request(f"invalid {what} {str(value)[:100]!r}: use letters, digits, '-', '_' or '.'")
    if value.endswith(".git"):
        raise bad_request(f"invalid {what} {value!r}: it must not end with '.git'")
    return value


def make_repo(repo_type: str, namespace: object, name: object) -> RepoRef:
    """Validate and build a :class:`RepoRef`; unknown types and reserved namespaces are refused."""
    if repo_type not in REPO_TYPES:
        raise ProtocolError(400, f"repo type {repo_type[:20]!r} is not served here (models and datasets are)")
    namespace = check_name(namespace, "namespace")
    if namespace.lower() in RESERVED_NAMESPACES:
        raise bad_request(f"namespace {namespace!r} is reserved")
    return RepoRef(repo_type, namespace, check_name(name, "repo name"))


def check_revision(value: object) -> str:
    """A branch, tag or commit id: ref-like characters, no ``..``, at most 200 characters."""
    if not isinstance(value, str) or len(value) > 200 or not _REF.fullmatch(value) or ".." in value:
        raise ProtocolError(400, f"invalid revision {str(value)[:100]!r}", "RevisionNotFound")
    return value


def check_path(value: object) -> str:
    """A file path inside a repo: relative, ``/``-separated, no empty, ``.`` or ``..`` parts, no control chars.

    Parts named like :data:`FORBIDDEN_FOLDERS` (``.git``, ``.cache``, any case) are refused too, as the
    huggingface_hub client refuses them in its own commits.
    """
    if not isinstance(value, str) or not value or len(value) > MAX_PATH_CHARS:
        raise bad_request("a path in the repo must be a non-empty string of at most 1024 characters")
    parts = value.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise bad_request(f"invalid path in repo {value[:100]!r}: use a relative path without '..'")
    if any(p.casefold() in FORBIDDEN_FOLDERS for p in parts[:-1]) or parts[-1].casefold() in FORBIDDEN_FOLDERS:
        raise bad_request(
            f"invalid path in repo {value[:100]!r}: files under '.git/' or '.cache/' are refused (as by huggingface_hub)"
        )
    return value


def check_branch_name(value: object) -> str:
    """A new branch or tag name: a valid revision that cannot be mistaken for a commit id."""
    value = check_revision(value)
    if SHA1_HEX.fullmatch(value) or value.startswith("refs/") or value.endswith((".lock", "/")):
        raise bad_request(f"invalid branch or tag name {value!r}")
    return value


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of ``data`` (what the Hub reports as a regular file's oid and ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    """The git-lfs pointer file that stands in the git tree for an LFS object."""
    return LFS_POINTER.format(oid=oid, size=size).encode()


def wants_lfs(path: str, size: int, sample: bytes) -> bool:
    """Whether an upload should go through LFS: big, binary-looking or matched by ``.gitattributes``."""
    return size > REGULAR_MAX_BYTES or path.lower().endswith(LFS_SUFFIXES) or b"\0" in sample
