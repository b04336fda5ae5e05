"""Write routes of ``medhub serve``: repos, preupload, commits, branches, tags and the LFS transfer."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from medhub.serve.app import Hub, json_response, read_body, read_json
from medhub.serve.auth import User
from medhub.serve.protocol import (
    REPO_TYPES,
    SHA1_HEX,
    SHA256_HEX,
    ProtocolError,
    RepoRef,
    bad_request,
    check_branch_name,
    check_path,
    check_revision,
    make_repo,
    wants_lfs,
)
from medhub.serve.storage import Operation, file_entry

UPLOAD_URL_SECONDS = 24 * 3600
COMMIT_BODY_CAP = 1 << 30  # the ndjson body is held in memory: large files belong in LFS
_MAX_FILES_PER_REQUEST = 10_000
_SUMMARY_CHARS = 10_000


def _writer(hub: Hub, request: Request) -> User:
    return hub.auth.can_write(request.headers.get("authorization"))


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _repo_url(request: Request, repo: RepoRef) -> str:
    return f"{_base(request)}/{REPO_TYPES[repo.type]}{repo.id}"


async def whoami(hub: Hub, request: Request) -> Response:
    """``GET /api/whoami-v2``."""
    user = hub.auth.user(request.headers.get("authorization"))
    if user is None:
        raise ProtocolError(401, "Invalid credentials in Authorization header")
    role = "write" if user.can_write else "read"
    return json_response(
        {
            "type": "user",
            "name": user.name,
            "fullname": user.name,
            "orgs": [],
            "isPro": False,
            "auth": {"type": "access_token", "accessToken": {"displayName": "medhub serve", "role": role}},
        }
    )


async def validate_yaml(hub: Hub, request: Request) -> Response:
    """``POST /api/validate-yaml``: accepted as is (front matter is parsed when repo info is read)."""
    await read_json(request)
    return json_response({"errors": [], "warnings": []})


def _repo_from_body(data: dict) -> RepoRef:
    kind = data.get("type") or "model"
    if kind not in ("model", "dataset"):
        raise bad_request(f"repo type {str(kind)[:20]!r} is not served here (model and dataset are)")
    if not data.get("organization"):
        raise bad_request("give the repo id as NAMESPACE/NAME (e.g. my-lab/my-model)")
    return make_repo(f"{kind}s", data["organization"], data.get("name"))


async def create_repo(hub: Hub, request: Request) -> Response:
    """``POST /api/repos/create``; 409 with ``url`` in the body when the repo exists."""
    user = _writer(hub, request)
    data = await read_json(request)
    repo = _repo_from_body(data)
    private = bool(data.get("private")) or data.get("visibility") == "private"
    try:
        await run_in_threadpool(hub.store.create_repo, repo, private=private, author=user.name)
    except ProtocolError as err:
        if err.status == 409:
            return json_response(
                {"error": err.message, "url": _repo_url(request, repo)}, 409, {"X-Error-Message": err.message}
            )
        raise
    return json_response({"url": _repo_url(request, repo), "name": repo.id, "id": repo.id})


async def delete_repo(hub: Hub, request: Request) -> Response:
    """``DELETE /api/repos/delete``."""
    _writer(hub, request)
    repo = _repo_from_body(await read_json(request))
    await run_in_threadpool(hub.store.delete_repo, repo)
    return json_response({})


async def preupload(hub: Hub, request: Request, repo: RepoRef, revision: str) -> Response:
    """``POST /api/{type}s/{repo}/preupload/{rev}``: LFS or regular per file, and the remote oid if known."""
    _writer(hub, request)
    files = (await read_json(request)).get("files")
    if not isinstance(files, list) or len(files) > _MAX_FILES_PER_REQUEST:
        raise bad_request(f"'files' must be a list of at most {_MAX_FILES_PER_REQUEST} objects")

    def work() -> list[dict]:
        commit_id, _ = hub.store.resolve(repo, revision)
        tree = hub.store.commit(repo, commit_id).files
        out = []
        for item in files:
            path = check_path(item.get("path") if isinstance(item, dict) else None)
            size, sample = item.get("size"), item.get("sample") or ""
            if not isinstance(size, int) or size < 0 or not isinstance(sample, str) or len(sample) > 4096:
                raise bad_request(
                    f"{path!r}: 'size' must be a non-negative integer and 'sample' short base64"
                )
            try:
                head = base64.b64decode(sample, validate=True)
            except (binascii.Error, ValueError):
                raise bad_request(f"{path!r}: 'sample' is not base64") from None
            lfs = not hub.regular_only and wants_lfs(path, size, head)
            remote = tree.get(path)
            oid = None if remote is None else remote["sha256"] if remote["lfs"] else remote["oid"]
            out.append(
                {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return out

    return json_response({"files": await run_in_threadpool(work), "commitOid": None})


def _parse_commit(hub: Hub, body: bytes) -> tuple[dict, list[Operation]]:
    """The header and operations of an ndjson commit body (regular file contents are stored only on commit)."""
    header: dict | None = None
    operations: list[Operation] = []
    for number, line in enumerate(body.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
        except (ValueError, KeyError, TypeError):
            raise bad_request(f"commit line {number} is not a JSON object with 'key' and 'value'") from None
        if not isinstance(value, dict):
            raise bad_request(f"commit line {number}: 'value' must be an object")
        if key == "header":
            header = value
        elif key == "file":
            operations.append(_regular_file(hub, value))
        elif key == "lfsFile":
            operations.append(_lfs_file(hub, value))
        elif key in ("deletedFile", "deletedFolder"):
            kind = "delete" if key == "deletedFile" else "delete_folder"
            operations.append(Operation(kind, check_path(str(value.get("path", "")).rstrip("/"))))
        else:
            raise bad_request(f"commit line {number}: unknown key {str(key)[:40]!r}")
        if len(operations) > 100_000:
            raise bad_request("too many operations in one commit")
    if header is None:
        raise bad_request("the commit has no header line")
    return header, operations


def _regular_file(hub: Hub, value: dict) -> Operation:
    path = check_path(value.get("path"))
    if value.get("encoding", "base64") != "base64" or not isinstance(value.get("content"), str):
        raise bad_request(f"{path!r}: content must be a base64 string")
    try:
        data = base64.b64decode(value["content"], validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{path!r}: content is not valid base64") from None
    sha = hashlib.sha256(data).hexdigest()
    return Operation("add", path, file_entry(sha, len(data), lfs=False, data=data), data=data)


def _lfs_file(hub: Hub, value: dict) -> Operation:
    path, oid, size = check_path(value.get("path")), value.get("oid"), value.get("size")
    if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str) or not SHA256_HEX.match(oid):
        raise bad_request(f"{path!r}: an LFS file needs a sha256 oid")
    if not hub.store.has_blob(oid) or (size is not None and not hub.store.has_blob(oid, size)):
        raise bad_request(
            f"{path!r}: LFS object {oid} was not uploaded (or has another size); upload it first"
        )
    return Operation("add", path, file_entry(oid, hub.store.blob_path(oid).stat().st_size, lfs=True))


async def commit(hub: Hub, request: Request, repo: RepoRef, revision: str) -> Response:
    """``POST /api/{type}s/{repo}/commit/{rev}`` (ndjson): 412 when ``parentCommit`` is not the head."""
    user = _writer(hub, request)
    if request.query_params.get("create_pr") in ("1", "true", "True"):
        raise ProtocolError(501, "medhub serve has no pull requests: commit to a branch instead")
    await run_in_threadpool(hub.store.meta, repo)
    body = await read_body(request, min(hub.max_upload_bytes * 4 // 3 + (1 << 20), COMMIT_BODY_CAP))

    def work() -> str:
        header, operations = _parse_commit(hub, body)
        parent = header.get("parentCommit")
        if parent is not None and (not isinstance(parent, str) or not SHA1_HEX.match(parent)):
            raise bad_request("parentCommit must be a 40-hex commit id")
        summary, description = header.get("summary") or "", header.get("description") or ""
        if not isinstance(summary, str) or not isinstance(description, str):
            raise bad_request("summary and description must be strings")
        return hub.store.create_commit(
            repo,
            revision,
            operations,
            summary=summary[:_SUMMARY_CHARS],
            description=description[:_SUMMARY_CHARS],
            author=user.name,
            parent=parent,
        )

    new = await run_in_threadpool(work)
    return json_response(
        {"commitUrl": f"{_repo_url(request, repo)}/commit/{new}", "commitOid": new, "pullRequestUrl": None}
    )


async def create_branch(hub: Hub, request: Request, repo: RepoRef, revision: str) -> Response:
    """``POST /api/{type}s/{repo}/branch/{name}`` json ``{startingPoint?}``; 409 if it exists."""
    _writer(hub, request)
    name, data = check_branch_name(revision), await read_json(request, optional=True)
    start = check_revision(data.get("startingPoint") or "main")

    def work() -> None:
        target, _ = hub.store.resolve(repo, start)
        hub.store.set_ref(repo, "branches", name, target, must_exist=False)

    await run_in_threadpool(work)
    return json_response({})


async def delete_branch(hub: Hub, request: Request, repo: RepoRef, revision: str) -> Response:
    """``DELETE /api/{type}s/{repo}/branch/{name}``."""
    _writer(hub, request)
    await run_in_threadpool(lambda: hub.store.set_ref(repo, "branches", revision, None, must_exist=True))
    return json_response({})


async def create_tag(hub: Hub, request: Request, repo: RepoRef, revision: str) -> Response:
    """``POST /api/{type}s/{repo}/tag/{rev}`` json ``{tag, message?}``; 409 if the tag exists."""
    _writer(hub, request)
    name = check_branch_name((await read_json(request)).get("tag"))

    def work() -> None:
        target, _ = hub.store.resolve(repo, revision)
        hub.store.set_ref(repo, "tags", name, target, must_exist=False)

    await run_in_threadpool(work)
    return json_response({})


async def delete_tag(hub: Hub, request: Request, repo: RepoRef, revision: str) -> Response:
    """``DELETE /api/{type}s/{repo}/tag/{name}``."""
    _writer(hub, request)
    await run_in_threadpool(lambda: hub.store.set_ref(repo, "tags", revision, None, must_exist=True))
    return json_response({})


async def xet_unsupported(hub: Hub, request: Request, repo: RepoRef, **_: object) -> Response:
    """Xet token routes: 501, so the client (with ``HF_HUB_DISABLE_XET=1``) uses plain LFS."""
    raise ProtocolError(
        501,
        "medhub serve does not support Xet: set HF_HUB_DISABLE_XET=1 before importing "
        "huggingface_hub, so uploads use LFS over HTTP",
    )


async def lfs_batch(hub: Hub, request: Request, repo: RepoRef) -> Response:
    """``POST /{prefix}{repo}.git/info/lfs/objects/batch``: signed upload and verify URLs per new object."""
    _writer(hub, request)
    data = await read_json(request)
    objects = data.get("objects")
    if data.get("operation") != "upload":
        raise bad_request("only the LFS 'upload' operation is served; download files through /resolve/")
    if not isinstance(objects, list) or len(objects) > _MAX_FILES_PER_REQUEST:
        raise bad_request(f"'objects' must be a list of at most {_MAX_FILES_PER_REQUEST} items")
    await run_in_threadpool(hub.store.meta, repo)
    expires, out = int(time.time()) + UPLOAD_URL_SECONDS, []
    for obj in objects:
        oid, size = (obj.get("oid"), obj.get("size")) if isinstance(obj, dict) else (None, None)
        if not isinstance(oid, str) or not SHA256_HEX.match(oid) or not isinstance(size, int) or size < 0:
            raise bad_request("each LFS object needs a sha256 'oid' and a non-negative integer 'size'")
        if size > hub.max_upload_bytes:
            raise ProtocolError(
                413,
                f"{oid}: {size} bytes is over this server's upload limit "
                f"({hub.max_upload_bytes} bytes; see --max-upload-mb)",
            )
        item: dict = {"oid": oid, "size": size, "authenticated": True}
        if not hub.store.has_blob(oid, size):
            sig = hub.auth.sign(f"{repo.type}/{repo.id}/{oid}/{size}", expires)
            api = f"{_base(request)}/api/{repo.type}/{repo.id}"
            item["actions"] = {
                "upload": {"href": f"{api}/lfs-upload/{oid}?size={size}&expires={expires}&sig={sig}"},
                "verify": {"href": f"{api}/lfs-verify"},
            }
        out.append(item)
    return json_response(
        {"transfer": "basic", "objects": out, "hash_algo": "sha256"},
        media_type="application/vnd.git-lfs+json",
    )


async def lfs_upload(hub: Hub, request: Request, repo: RepoRef, oid: str) -> Response:
    """``PUT .../lfs-upload/{oid}?size&expires&sig``: stream to a temporary file, publish only if sha256 matches."""
    query = request.query_params
    size_text = query.get("size", "")
    hub.auth.check_signature(
        f"{repo.type}/{repo.id}/{oid}/{size_text}", query.get("expires", ""), query.get("sig", "")
    )
    size = int(size_text)
    declared = request.headers.get("content-length")
    if declared is not None and declared != str(size):
        raise bad_request(f"Content-Length {declared[:20]} differs from the declared size {size}")
    if hub.store.has_blob(oid, size):
        return json_response({})
    writer = hub.store.blob_writer(oid, size)
    try:
        async for chunk in request.stream():
            writer.write(chunk)
        await run_in_threadpool(writer.finish)
    finally:
        writer.abort()
    return json_response({})


async def lfs_verify(hub: Hub, request: Request, repo: RepoRef) -> Response:
    """``POST .../lfs-verify`` json ``{oid, size}``: 200 once the object is stored with that size."""
    _writer(hub, request)
    data = await read_json(request)
    oid, size = data.get("oid"), data.get("size")
    if not isinstance(oid, str) or not SHA256_HEX.match(oid) or not isinstance(size, int):
        raise bad_request("verify needs a sha256 'oid' and an integer 'size'")
    if not hub.store.has_blob(oid, size):
        raise ProtocolError(404, f"LFS object {oid} ({size} bytes) is not stored; upload it again")
    return json_response({})
