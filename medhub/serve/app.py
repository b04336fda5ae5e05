"""The ASGI application of ``medhub serve``: routing on the raw path, error answers, body limits.

The client percent-encodes revisions and paths with ``safe=""`` (``refs%2Fpr%2F1``, ``data%2Ftrain.csv``),
so routes are matched on the raw path split at ``/``, and each segment is decoded on its own and validated
(:mod:`medhub.serve.protocol`) before anything touches the store.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from medhub.serve.audit import AuditLog
from medhub.serve.auth import Auth
from medhub.serve.protocol import (
    REPO_TYPES,
    ProtocolError,
    bad_request,
    check_path,
    check_revision,
    make_repo,
)
from medhub.serve.storage import Store

log = logging.getLogger(__name__)
#: Largest JSON body of an authenticated request (a preupload of 10,000 files is about 3 MB).
JSON_LIMIT = 16 * 1024 * 1024
#: Largest body of a request without an ``Authorization`` header (signed LFS uploads stream on their own).
TOKENLESS_BODY_LIMIT = 64 * 1024
#: Deepest JSON nesting accepted; the deepest Hub request (a preupload) nests 3 levels.
MAX_JSON_DEPTH = 16
#: Bodies up to this size are parsed on the event loop; larger ones in a worker thread.
INLINE_PARSE_BYTES = 64 * 1024
Handler = Callable[..., Awaitable[Response]]


@dataclass
class Hub:
    """What every handler needs: the store, access control and limits."""

    store: Store
    auth: Auth
    max_upload_bytes: int
    regular_only: bool = False
    audit: AuditLog | None = None


def json_response(
    data: object, status: int = 200, headers: dict | None = None, media_type: str | None = None
) -> Response:
    """A compact JSON answer."""
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(body, status, headers, media_type or "application/json")


async def threaded_json(work: Callable[..., object], *args: object) -> Response:
    """Run ``work(*args)`` and encode its JSON answer in a worker thread: listings of thousands of
    files take tens of milliseconds to build and encode, which must not stall the event loop."""

    def build() -> bytes:
        return json.dumps(work(*args), separators=(",", ":")).encode()

    return Response(await run_in_threadpool(build), 200, media_type="application/json")


def error_response(err: ProtocolError, extra: dict | None = None) -> Response:
    """An error the client maps to its exceptions: status, ``X-Error-Code``, ``X-Error-Message``, JSON body."""
    message = err.message.encode("ascii", "backslashreplace").decode()
    headers = {"X-Error-Message": message}
    if err.code:
        headers["X-Error-Code"] = err.code
    return JSONResponse({"error": err.message, **(extra or {})}, err.status, headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes (see :func:`read_chunks`)."""
    return b"".join(await read_chunks(request, limit))


async def read_chunks(request: Request, limit: int) -> list[bytes]:
    """The request body as received, refused with 413 beyond ``limit`` bytes (checked before and while
    reading). Join large bodies in a worker thread: copying a gigabyte takes the event loop's time.

    A request without an ``Authorization`` header gets at most :data:`TOKENLESS_BODY_LIMIT` bytes, so an
    anonymous client cannot make the server buffer (or parse) a large body.
    """
    if not request.headers.get("authorization"):
        limit = min(limit, TOKENLESS_BODY_LIMIT)
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ProtocolError(413, f"request body is larger than the server's limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(413, f"request body is larger than the server's limit of {limit} bytes")
        chunks.append(chunk)
    return chunks


def parse_json(text: bytes | str, what: str = "request body") -> object:
    """Parse JSON nested at most :data:`MAX_JSON_DEPTH` levels; 400 for invalid or too deeply nested input.

    The C parser raises ``RecursionError`` on very deep input (around 1,000 levels); shallower but still
    unusual nesting is refused by an iterative walk of the result.
    """
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad_request(f"{what} is not valid JSON") from None
    except RecursionError:
        raise bad_request(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep") from None
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= MAX_JSON_DEPTH:
                    raise bad_request(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
                stack.append((child, depth + 1))
    return data


async def read_json(request: Request, *, optional: bool = False) -> dict:
    """A JSON object body; 400 for anything else (an empty body is ``{}`` when ``optional``).

    Large bodies are parsed in a worker thread: parsing megabytes of JSON would stall every other
    request on the event loop.
    """
    body = await read_body(request, JSON_LIMIT)
    if optional and not body.strip():
        return {}
    if len(body) > INLINE_PARSE_BYTES:
        data = await run_in_threadpool(parse_json, body)
    else:
        data = parse_json(body)
    if not isinstance(data, dict):
        raise bad_request("request body must be a JSON object")
    return data


def _dec(segment: str) -> str:
    return unquote(segment, errors="strict")


def match(method: str, segments: list[str]) -> tuple[Handler, dict]:
    """Find the handler and its arguments for a raw path split at ``/`` (404 if none)."""
    from medhub.serve import read_api, write_api

    if segments and segments[0] == "api":
        rest = segments[1:]
        fixed = {
            ("GET", "whoami-v2"): write_api.whoami,
            ("POST", "validate-yaml"): write_api.validate_yaml,
            ("POST", "repos/create"): write_api.create_repo,
            ("DELETE", "repos/delete"): write_api.delete_repo,
        }
        if (method, "/".join(rest)) in fixed:
            return fixed[(method, "/".join(rest))], {}
        if len(rest) >= 3 and rest[0] in (*REPO_TYPES, "spaces"):
            repo = make_repo(rest[0], _dec(rest[1]), _dec(rest[2]))
            action, args = (rest[3] if len(rest) > 3 else ""), rest[4:]
            found = _repo_route(method, action, args, read_api, write_api)
            if found is not None:
                handler, params = found
                return handler, {"repo": repo, **params}
    else:
        repo_type = "datasets" if segments[:1] == ["datasets"] else "models"
        rest = segments[1:] if segments[:1] in (["datasets"], ["spaces"]) else segments
        if segments[:1] == ["spaces"]:
            make_repo("spaces", "", "")
        lfs = rest[2:] == ["info", "lfs", "objects", "batch"]
        if len(rest) == 6 and rest[1].endswith(".git") and lfs and method == "POST":
            return write_api.lfs_batch, {"repo": make_repo(repo_type, _dec(rest[0]), _dec(rest[1])[:-4])}
        if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
            repo = make_repo(repo_type, _dec(rest[0]), _dec(rest[1]))
            path = check_path("/".join(_dec(s) for s in rest[4:]))
            return read_api.resolve, {"repo": repo, "revision": check_revision(_dec(rest[3])), "path": path}
    raise ProtocolError(404, f"no such endpoint: {method} /{'/'.join(segments)[:200]}")


def _repo_route(
    method: str, action: str, args: list[str], read_api, write_api
) -> tuple[Handler, dict] | None:
    """Routes under ``/api/{type}s/{namespace}/{name}``."""
    rev = check_revision(_dec(args[0])) if args else None
    tail = "/".join(_dec(s) for s in args[1:] if s)
    table: dict[tuple[str, str, bool], Handler] = {
        ("GET", "", False): read_api.repo_info,
        ("GET", "revision", True): read_api.repo_info,
        ("GET", "tree", True): read_api.tree,
        ("POST", "paths-info", True): read_api.paths_info,
        ("GET", "refs", False): read_api.refs,
        ("GET", "commits", True): read_api.commits,
        ("POST", "preupload", True): write_api.preupload,
        ("POST", "commit", True): write_api.commit,
        ("POST", "branch", True): write_api.create_branch,
        ("DELETE", "branch", True): write_api.delete_branch,
        ("POST", "tag", True): write_api.create_tag,
        ("DELETE", "tag", True): write_api.delete_tag,
        ("POST", "lfs-verify", False): write_api.lfs_verify,
    }
    if action in ("xet-write-token", "xet-read-token"):
        return write_api.xet_unsupported, {}
    if action == "lfs-upload" and method == "PUT" and len(args) == 1:
        return write_api.lfs_upload, {"oid": _dec(args[0])}
    if action == "revision" and len(args) > 1:  # an unencoded revision such as refs/pr/1
        rev, tail = check_revision("/".join(_dec(s) for s in args)), ""
    elif len(args) > 1 and action != "tree" and any(a == action and r for _, a, r in table):
        # POST .../commit/feature/x would otherwise commit to "feature": refuse, never guess
        raise ProtocolError(
            400,
            f"ambiguous revision in {action}/{'/'.join(args)[:100]}: encode '/' in a revision as %2F",
            "RevisionNotFound",
        )
    handler = table.get((method, action, rev is not None))
    if handler is None:
        return None
    params: dict = {"revision": rev} if rev is not None else {}
    if action == "tree":
        params["path"] = check_path(tail) if tail else ""
    return handler, params


def create_app(hub: Hub) -> Starlette:
    """The ASGI app serving ``hub``."""
    from medhub.serve import read_api, write_api  # noqa: F401 - loaded now, not on the first request

    async def dispatch(request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        segments = raw.decode("latin-1").split("/")[1:]
        if segments and segments[-1] == "" and len(segments) > 1:
            segments = segments[:-1]
        try:
            handler, params = match(request.method, segments)
            return await handler(hub, request, **params)
        except ProtocolError as err:
            if err.status >= 500:
                log.error("%s %s: %s", request.method, request.url.path[:200], err.message)
            return error_response(err)
        except UnicodeDecodeError:
            return error_response(bad_request("the request path is not valid UTF-8 once decoded"))
        except ClientDisconnect:
            log.info("client went away during %s %s", request.method, request.url.path[:200])
            return Response(status_code=499)
        except RecursionError:  # deeply nested input met by a recursive parser (JSON, YAML)
            return error_response(bad_request("the request is nested too deeply"))
        except Exception:  # a bug: answered in the Hub's error shape, logged with its traceback
            log.exception("%s %s failed", request.method, request.url.path[:200])
            return error_response(ProtocolError(500, "internal error in medhub serve; see the server log"))

    methods = ["GET", "HEAD", "POST", "PUT", "DELETE"]
    app = Starlette(routes=[Route("/{rest:path}", dispatch, methods=methods)])
    app.state.hub = hub
    return app
