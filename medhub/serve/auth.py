"""Access control for ``medhub serve``: bearer tokens read from a file, and signed LFS upload URLs.

Token file format: one token per line; blank lines and lines starting with ``#`` are ignored::

    TOKEN [NAME] [ROLE] [NAMESPACE=ROLE ...]

``ROLE`` is ``none``, ``read``, ``write`` or ``admin`` (each includes the ones before it): ``read`` may
download, ``write`` may also create repos, commit and create branches and tags, ``admin`` may also
delete repos, branches and tags (which is how a tag is moved). The third field is the role in every
namespace not listed after it; ``NAMESPACE=ROLE`` fields set the role in one namespace (organisation).
Defaults: ``NAME`` is ``medhub``; a line without a role is ``admin`` everywhere, which is what such a
line allowed before roles existed. So ``TOKEN [NAME] [read|write]`` files keep working.

Tokens are compared in constant time and never logged. :meth:`Auth.reload` re-reads the file (the
server calls it on ``SIGHUP``), so a revoked token stops working without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from medhub.errors import UsageError
from medhub.serve.protocol import ProtocolError, RepoRef

log = logging.getLogger(__name__)
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"  # the client's exact wording
ROLES = ("none", "read", "write", "admin")  # each role includes the ones before it
_LINE_FORMAT = "expected 'TOKEN [NAME] [none|read|write|admin] [NAMESPACE=ROLE ...]' with a token of 8+ characters"


@dataclass(frozen=True)
class User:
    """Who a token belongs to and what it may do. ``repr`` never shows the token.

    Attributes:
        name: the name written to the audit log and shown by ``whoami``.
        role: the role in every namespace not in ``namespaces``.
        namespaces: ``(namespace, role)`` pairs that override ``role``.
    """

    name: str
    role: str = "admin"
    namespaces: tuple[tuple[str, str], ...] = field(default=())

    def role_in(self, namespace: str) -> str:
        """The role of this user in ``namespace``."""
        for known, role in self.namespaces:
            if known == namespace:
                return role
        return self.role

    def allows(self, namespace: str, needed: str) -> bool:
        """Whether the user's role in ``namespace`` includes ``needed``."""
        return ROLES.index(self.role_in(namespace)) >= ROLES.index(needed)

    @property
    def can_write(self) -> bool:
        """Whether the user may write in at least one namespace."""
        return any(ROLES.index(r) >= ROLES.index("write") for r in (self.role, *(r for _, r in self.namespaces)))


def _parse_line(path: str | os.PathLike, number: int, fields: list[str]) -> User:
    positional = [f for f in fields[1:] if "=" not in f]
    scoped = [f for f in fields[1:] if "=" in f]
    if len(fields[0]) < 8 or len(positional) > 2 or fields[1:] != positional + scoped:
        raise UsageError(f"{path}, line {number}: {_LINE_FORMAT}")
    name = positional[0] if positional else "medhub"
    role = positional[1] if len(positional) > 1 else "admin"
    namespaces = []
    for item in scoped:
        namespace, _, scoped_role = item.partition("=")
        if not namespace or scoped_role not in ROLES:
            raise UsageError(f"{path}, line {number}: {item!r} is not NAMESPACE=ROLE; {_LINE_FORMAT}")
        namespaces.append((namespace, scoped_role))
    if role not in ROLES:
        raise UsageError(f"{path}, line {number}: unknown role {role!r}; {_LINE_FORMAT}")
    return User(name, role, tuple(namespaces))


def read_token_file(path: str | os.PathLike) -> dict[str, User]:
    """Parse a token file; a missing file or a malformed line is a :class:`UsageError`."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise UsageError(
            f"cannot read the token file {path}: {reason}; create it with one token per line"
        ) from None
    tokens: dict[str, User] = {}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        tokens[fields[0]] = _parse_line(path, number, fields)
    return tokens


def token_file_warning(path: str | os.PathLike) -> str | None:
    """A warning when the token file can be read (or written) by its group or by others, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"the token file {path} is readable by other users (mode {stat.S_IMODE(mode):04o}): "
            f"run chmod 600 {path}"
        )
    return None


class Auth:
    """Decides who may read and write, from the ``Authorization`` header."""

    def __init__(
        self,
        tokens: dict[str, User],
        *,
        public_read: bool,
        secret: bytes,
        token_file: str | os.PathLike | None = None,
    ) -> None:
        self._tokens = tokens
        self.public_read = public_read
        self._secret = secret
        self.token_file = token_file

    def reload(self) -> int:
        """Re-read the token file; on an error the old tokens stay in force. Returns the number of tokens."""
        if self.token_file is None:
            return len(self._tokens)
        try:
            tokens = read_token_file(self.token_file)
        except UsageError as exc:
            log.error("token file not reloaded, the previous tokens stay in force: %s", exc)
            return len(self._tokens)
        warning = token_file_warning(self.token_file)
        if warning:
            log.warning(warning)
        self._tokens = tokens  # one assignment: a request sees the old set or the new one
        log.warning("reloaded %d token(s) from %s", len(tokens), self.token_file)
        return len(tokens)

    def user(self, authorization: str | None) -> User | None:
        """The user of a ``Bearer`` token; None without a header; 401 for an unknown token."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ProtocolError(401, INVALID_CREDENTIALS)
        token = token.strip()
        found = None
        for known, user in self._tokens.items():  # every comparison made: no early exit to time
            if hmac.compare_digest(known.encode(), token.encode()):
                found = user
        if found is None:
            raise ProtocolError(401, INVALID_CREDENTIALS)
        return found

    def can_read(self, authorization: str | None, *, private: bool = False) -> User | None:
        """Check read access; 401 when a token is needed and missing."""
        user = self.user(authorization)
        if user is None and (private or not self.public_read):
            raise ProtocolError(
                401, "this server needs a token to read: set HF_TOKEN or pass token=", "RepoNotFound"
            )
        return user

    def can_write(self, authorization: str | None) -> User:
        """Check that the token may write somewhere; 401 without a token, 403 for a read-only token."""
        user = self.user(authorization)
        if user is None:
            raise ProtocolError(401, "writing needs a token: set HF_TOKEN or pass token= (see --token-file)")
        if not user.can_write:
            raise ProtocolError(403, f"user {user.name} has a read-only token")
        return user

    @staticmethod
    def check_repo(user: User | None, repo: RepoRef, needed: str) -> None:
        """Check ``user``'s role in the repo's namespace: 404 ``RepoNotFound`` without read access (the
        repo's existence is not revealed), 403 when reading is allowed but ``needed`` is not."""
        if user is None or user.allows(repo.namespace, needed):
            return
        if not user.allows(repo.namespace, "read"):
            raise ProtocolError(404, f"repository {repo.type}/{repo.id} not found", "RepoNotFound")
        raise ProtocolError(
            403, f"user {user.name} has no {needed} access to the namespace {repo.namespace!r}"
        )

    # ---- signed upload URLs: the client sends no Authorization header with the LFS PUT ----------
    def sign(self, message: str, expires: int) -> str:
        """HMAC of ``message`` valid until ``expires`` (unix time)."""
        return hmac.new(self._secret, f"{message}|{expires}".encode(), hashlib.sha256).hexdigest()

    def check_signature(self, message: str, expires: str, signature: str) -> None:
        """403 unless ``signature`` signs ``message`` and has not expired."""
        try:
            valid = int(expires) >= time.time() and hmac.compare_digest(
                self.sign(message, int(expires)), signature
            )
        except ValueError:
            valid = False
        if not valid:
            raise ProtocolError(403, "upload URL is invalid or expired: ask the batch endpoint for a new one")


def load_secret(root: Path) -> bytes:
    """The server's signing key, kept in ``root/.secret`` (mode 0600) so signed URLs survive a restart."""
    path = root / ".secret"
    if not path.exists():
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(path.with_suffix(".tmp"), path)
    return path.read_bytes()


#: Query parameters whose values are kept in log lines; every other value is replaced by ``[redacted]``
#: (a client may put a token in ``?token=``, and signed upload URLs carry ``sig``).
SAFE_QUERY_KEYS = frozenset({"recursive", "expand", "size", "expires", "create_pr", "limit", "cursor", "include_prs", "user"})
_QUERY = re.compile(r"\?[^\s\"'#]*")
_BEARER = re.compile(r"(?i)\b(bearer|token)(\s*[:=]?\s*)[A-Za-z0-9._~+/=-]{8,}")


def _redact_query(match: re.Match) -> str:
    parts = []
    for pair in re.split(r"([&;])", match.group(0)[1:]):
        key, eq, _value = pair.partition("=")
        parts.append(pair if pair in ("&", ";") or not eq or key.lower() in SAFE_QUERY_KEYS else f"{key}=[redacted]")
    return "?" + "".join(parts)


def redact(text: str, secrets_: tuple[str, ...] = ()) -> str:
    """``text`` with query-string values (except :data:`SAFE_QUERY_KEYS`), bearer tokens and ``secrets_`` hidden."""
    for secret in secrets_:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    text = _QUERY.sub(_redact_query, text)
    return _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)


class RedactingFilter(logging.Filter):
    """A handler filter that passes every record through :func:`redact` (attach it to handlers, not
    loggers: records from child loggers skip their parents' logger filters)."""

    def __init__(self, auth: Auth | None = None) -> None:
        super().__init__()
        self.auth = auth

    def filter(self, record: logging.LogRecord) -> bool:
        known = tuple(self.auth._tokens) if self.auth is not None else ()
        message = record.getMessage()
        cleaned = redact(message, known)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
