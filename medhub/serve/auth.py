"""Access control for ``medhub serve``: bearer tokens read from a file, and signed LFS upload URLs.

Token file format: one token per line; blank lines and lines starting with ``#`` are ignored. A line may
add a user name and a role after the token, separated by spaces: ``TOKEN [NAME] [read|write]``
(defaults: ``medhub``, ``write``). Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from medhub.errors import UsageError
from medhub.serve.protocol import ProtocolError

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"  # the client's exact wording


@dataclass(frozen=True)
class User:
    """Who a token belongs to. ``repr`` never shows the token."""

    name: str
    can_write: bool


def read_token_file(path: str | os.PathLike) -> dict[str, User]:
    """Parse a token file; a missing file or an unknown role is a :class:`UsageError`."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(
            f"cannot read the token file {path}: {exc.strerror}; create it with one token per line"
        ) from None
    tokens: dict[str, User] = {}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        role = fields[2] if len(fields) > 2 else "write"
        if role not in ("read", "write") or len(fields) > 3 or len(fields[0]) < 8:
            raise UsageError(
                f"{path}, line {number}: expected 'TOKEN [NAME] [read|write]' with a token of 8+ characters"
            )
        tokens[fields[0]] = User(fields[1] if len(fields) > 1 else "medhub", role == "write")
    return tokens


class Auth:
    """Decides who may read and write, from the ``Authorization`` header."""

    def __init__(self, tokens: dict[str, User], *, public_read: bool, secret: bytes) -> None:
        self._tokens = tokens
        self.public_read = public_read
        self._secret = secret

    def user(self, authorization: str | None) -> User | None:
        """The user of a ``Bearer`` token; None without a header; 401 for an unknown token."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ProtocolError(401, INVALID_CREDENTIALS)
        token = token.strip()
        for known, user in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return user
        raise ProtocolError(401, INVALID_CREDENTIALS)

    def can_read(self, authorization: str | None, *, private: bool = False) -> User | None:
        """Check read access; 401 when a token is needed and missing."""
        user = self.user(authorization)
        if user is None and (private or not self.public_read):
            raise ProtocolError(
                401, "this server needs a token to read: set HF_TOKEN or pass token=", "RepoNotFound"
            )
        return user

    def can_write(self, authorization: str | None) -> User:
        """Check write access; 401 without a token, 403 for a read-only token."""
        user = self.user(authorization)
        if user is None:
            raise ProtocolError(401, "writing needs a token: set HF_TOKEN or pass token= (see --token-file)")
        if not user.can_write:
            raise ProtocolError(403, f"user {user.name} has a read-only token")
        return user

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
