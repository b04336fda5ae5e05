"""Write routes of ``medhub serve``: repos, preupload, commits, branches, tags and the LFS transfer."""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from medhub.serve.app import Hub, json_response, parse_json, read_chunks, read_json
from medhub.serve.auth import Auth, User
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
    field_bool,
    field_int,
    field_str,
    make_repo,
    wants_lfs,
)
from medhub.serve.storage import Operation, file_entry

UPLOAD_URL_SECONDS = 24 * 3600
COMMIT_BODY_CAP = 1 << 30  # the ndjson body is held in memory: large files belong in LFS
_MAX_FILES_PER_REQUEST = 10_000
_SUMMARY_CHARS = 10_000
_UPLOAD_BATCH = 1 << 20


def _writer(hub: Hub, request: Request, repo: RepoRef | None = None, role: str = "write") -> User:
    """The user of the request's token, checked for ``role`` in ``repo``'s namespace (401/403/404)."""
    user = hub.auth.can_write(request.headers.get("authorization"))
    if repo is not None:
        Auth.check_repo(user, repo, role)
    return user


async def _audit(hub: Hub, request: Request, action: str, user: str, repo: RepoRef, **details: object) -> None:
    """Append a record of a write that succeeded to the audit log (in a worker thread: it fsyncs)."""
    if hub.audit is not None:
        client = request.client.host if request.client else None
        await run_in_threadpool(
            lambda: hub.audit.record(action, user, client, f"{repo.type}/{repo.id}", **details)
        )


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
    orgs = [{"type": "org", "name": ns, "roleInOrg": r} for ns, r in user.namespaces if r != "none"]
    return json_response(
        {
            "type": "user",
            "name": user.name,
            "fullname": user.name,
            "orgs": orgs,
            "isPro": False,
            "auth": {"type": "access_token", "accessToken": {"displayName": "medhub serve", "role": role}},
        }
    )


async def validate_yaml(hub: Hub, request: Request) -> Response:
    """``POST /api/validate-yaml``: accepted as is (front matter is parsed when repo info is read).

    An invalid token is refused first; without a token the body is capped at a few KiB (see ``read_body``).
    """
    hub.auth.user(request.headers.get("authorization"))
    data = await read_json(request)
    field_str(data.get("content"), "'content'", optional=True, max_chars=16 * 1024 * 1024)
    field_str(data.get("repoType"), "'repoType'", optional=True, max_chars=20)
    return json_response({"errors": [], "warnings": []})


def _repo_from_body(data: dict) -> RepoRef:
    kind = field_str(data.get("type"), "'type'", optional=True, max_chars=20) or "model"
    if kind not in ("model", "dataset"):
        raise bad_request(f"repo type {kind[:20]!r} is not served here (model and dataset are)")
    organization = field_str(data.get("organization"), "'organization'", optional=True, max_chars=200)
    if not organization:
        raise bad_request("give the repo id as NAMESPACE/NAME (e.g. my-lab/my-model)")
    return make_repo(f"{kind}s", organization, field_str(data.get("name"), "'name'", max_chars=200))


async def create_repo(hub: Hub, request: Request) -> Response:
    """``POST /api/repos/create``; 409 with ``url`` in the body when the repo exists."""
    user = _writer(hub, request)
    data = await read_json(request)
    repo = _repo_from_body(data)
    Auth.check_repo(user, repo, "write")
    visibility = field_str(data.get("visibility"), "'visibility'", optional=True, max_chars=20)
    if visibility not in (None, "public", "private"):
        raise bad_request("'visibility' must be 'public' or 'private'")
    private = bool(field_bool(data.get("private"), "'private'")) or visibility == "private"
    try:
        head = await run_in_threadpool(hub.store.create_repo, repo, private=private, author=user.name)
    except ProtocolError as err:
        if err.status == 409:
            return json_response(
                {"error": err.message, "url": _repo_url(request, repo)}, 409, {"X-Error-Message": err.message}
            )
        raise
    await _audit(hub, request, "create_repo", user.name, repo, commit=head, private=private)
    return json_response({"url": _repo_url(request, repo), "name": repo.id, "id": repo.id})


async def delete_repo(hub: Hub, request: Request) -> Response:
    """``DELETE /api/repos/delete``: needs the ``admin`` role in the repo's namespace."""
    user = _writer(hub, request)
    repo = _repo_from_body(await read_json(request))
    Auth.check_repo(user, repo, "admin")
    await run_in_threadpool(hub.store.delete_repo, repo)
    await _audit(hub, request, "delete_repo", user.name, repo)
    return json_response({})


async def preupload(hub: Hub, request: Request, repo: RepoRef, revision: str) -> Response:
    """``POST /api/{type}s/{repo}/preupload/{rev}``: LFS or regular per file, and the remote oid if known."""
    _writer(hub, request, repo)
    files = (await read_json(request)).get("files")
    if not isinstance(files, list) or len(files) > _MAX_FILES_PER_REQUEST:
        raise bad_request(f"'files' must be a list of at most {_MAX_FILES_PER_REQUEST} objects")
    if not all(isinstance(item, dict) for item in files):
        raise bad_request("each item of 'files' must be an object with 'path', 'size' and 'sample'")

    def work() -> list[dict]:
        commit_id, _ = hub.store.resolve(repo, revision)
        tree = hub.store.commit(repo, commit_id).files
        out = []
        for item in files:
            path = check_path(item.get("path"))
            size = field_int(item.get("size"), f"{path!r}: 'size'")
            sample = field_str(item.get("sample"), f"{path!r}: 'sample'", optional=True, max_chars=4096) or ""
            try:
                head = base64.b64decode(sample, validate=True)
            except (binascii.Error, ValueError):
                raise bad_request(f"{path!r}: 'sample' is not base64") from None
            lfs = not hub.regular_only and wants_lfs(path, size, head)
            remote = tree.get(path)
            if remote is not None and not hub.store.has_blob(remote["sha256"], remote["size"]):
                remote = None  # content lost (fsck --quarantine): ask the client to send it again
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
        item = parse_json(line, f"commit line {number}")
        if not isinstance(item, dict) or "key" not in item or "value" not in item:
            raise bad_request(f"commit line {number} is not a JSON object with 'key' and 'value'")
        key, value = item["key"], item["value"]
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
            path = field_str(value.get("path"), f"commit line {number}: 'path'", max_chars=2048)
            operations.append(Operation(kind, check_path(path.rstrip("/") if kind == "delete_folder" else path)))
        else:
            raise bad_request(f"commit line {number}: unknown key {str(key)[:40]!r}")
        if len(operations) > 100_000:
            raise bad_request("too many operations in one commit")
    if header is None:
        raise bad_request("the commit has no header line")
    return header, operations


def _regular_file(hub: Hub, value: dict) -> Operation:
    path = check_path(value.get("path"))
    encoding = field_str(value.get("encoding"), f"{path!r}: 'encoding'", optional=True, max_chars=20)
    if encoding not in (None, "base64") or not isinstance(value.get("content"), str):
        raise bad_request(f"{path!r}: content must be a base64 string")
    try:
        data = base64.b64decode(value["content"], validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{path!r}: content is not valid base64") from None
    sha = hashlib.sha256(data).hexdigest()
    return Operation("add", path, file_entry(sha, len(data), lfs=False, data=data), data=data)


def _lfs_file(hub: Hub, value: dict) -> Operation:
    path, oid = check_path(value.get("path")), value.get("oid")
    size = field_int(value.get("size"), f"{path!r}: 'size'", optional=True)
    algo = field_str(value.get("algo"), f"{path!r}: 'algo'", optional=True, max_chars=20)
    if algo not in (None, "sha256") or not isinstance(oid, str) or not SHA256_HEX.fullmatch(oid):
        raise bad_request(f"{path!r}: an LFS file needs a sha256 oid")
    if not hub.store.has_blob(oid) or (size is not None and not hub.store.has_blob(oid, size)):
        raise bad_request(
            f"{path!r}: LFS object {oid} was not uploaded (or has another size); upload it first"
        )
    return Operation("add", path, file_entry(oid, hub.store.blob_path(oid).stat().st_size, lfs=True))


async def commit(hub: Hub, request: Request, repo: RepoRef, revision: str) -> Response:
    """``POST /api/{type}s/{repo}/commit/{rev}`` (ndjson): 412 when ``parentCommit`` is not the head."""
    user = _writer(hub, request, repo)
    if request.query_params.get("create_pr") in ("1", "true", "True"):
        raise ProtocolError(501, "medhub serve has no pull requests: commit to a branch instead")
    await run_in_threadpool(hub.store.meta, repo)
    chunks = await read_chunks(request, min(hub.max_upload_bytes * 4 // 3 + (1 << 20), COMMIT_BODY_CAP))

    def work() -> str:
        header, operations = _parse_commit(hub, b"".join(chunks))
        parent = header.get("parentCommit")
        if parent is not None and (not isinstance(parent, str) or not SHA1_HEX.fullmatch(parent)):
            raise bad_request("parentCommit must be a 40-hex commit id")
        summary = field_str(header.get("summary"), "'summary'", optional=True, max_chars=1 << 20) or ""
        description = field_str(header.get("description"), "'description'", optional=True, max_chars=1 << 20) or ""
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
    await _audit(hub, request, "commit", user.name, repo, ref=revision, commit=new)
    return json_response(
        {"commitUrl": f"{_repo_url(request, repo)}/commit/{new}", "commitOid": new, "pullRequestUrl": None}
    )


async def create_branch(hub: Hub, request: Request, repo: RepoRef, revision: str) -> Response:
    """``POST /api/{type}s/{repo}/branch/{name}`` json ``{startingPoint?}``; 409 if it exists."""
    user = _writer(hub, request, repo)
    name, data = check_branch_name(revision), await read_json(request, optional=True)
    start = check_revision(field_str(data.get("startingPoint"), "'startingPoint'", optional=True) or "main")

    def work() -> str:
        target, _ = hub.store.resolve(repo, start)
        hub.store.set_ref(repo, "branches", name, target, must_exist=False)
        return target

    target = await run_in_threadpool(work)
    await _audit(hub, request, "create_branch", user.name, repo, ref=name, commit=target)
    return json_response({})


async def delete_branch(hub: Hub, request: Request, repo: RepoRef, revision: str) -> Response:
    """``DELETE /api/{type}s/{repo}/branch/{name}``: needs the ``admin`` role."""
    user = _writer(hub, request, repo, "admin")
    await run_in_threadpool(lambda: hub.store.set_ref(repo, "branches", revision, None, must_exist=True))
    await _audit(hub, request, "delete_branch", user.name, repo, ref=revision)
    return json_response({})


async def create_tag(hub: Hub, request: Request, repo: RepoRef, revision: str) -> Response:
    """``POST /api/{type}s/{repo}/tag/{rev}`` json ``{tag, message?}``; 409 if the tag exists."""
    user = _writer(hub, request, repo)
    data = await read_json(request)
    name = check_branch_name(field_str(data.get("tag"), "'tag'", max_chars=200))
    field_str(data.get("message"), "'message'", optional=True)

    def work() -> str:
        target, _ = hub.store.resolve(repo, revision)
        hub.store.set_ref(repo, "tags", name, target, must_exist=False)
        return target

    target = await run_in_threadpool(work)
    await _audit(hub, request, "create_tag", user.name, repo, ref=name, commit=target)
    return json_response({})


async def delete_tag(hub: Hub, request: Request, repo: RepoRef, revision: str) -> Response:
    """``DELETE /api/{type}s/{repo}/tag/{name}``: needs the ``admin`` role (deleting is how a tag moves)."""
    user = _writer(hub, request, repo, "admin")
    await run_in_threadpool(lambda: hub.store.set_ref(repo, "tags", revision, None, must_exist=True))
    await _audit(hub, request, "delete_tag", user.name, repo, ref=revision)
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
    user = _writer(hub, request, repo)
    data = await read_json(request)
    objects = data.get("objects")
    if field_str(data.get("operation"), "'operation'", max_chars=20) != "upload":
        raise bad_request("only the LFS 'upload' operation is served; download files through /resolve/")
    if not isinstance(objects, list) or len(objects) > _MAX_FILES_PER_REQUEST:
        raise bad_request(f"'objects' must be a list of at most {_MAX_FILES_PER_REQUEST} items")
    transfers = data.get("transfers")
    if transfers is not None and (not isinstance(transfers, list) or not all(isinstance(t, str) for t in transfers)):
        raise bad_request("'transfers' must be a list of strings")
    await run_in_threadpool(hub.store.meta, repo)
    expires, out = int(time.time()) + UPLOAD_URL_SECONDS, []
    for obj in objects:
        oid, size = (obj.get("oid"), obj.get("size")) if isinstance(obj, dict) else (None, None)
        if not isinstance(oid, str) or not SHA256_HEX.fullmatch(oid) or type(size) is not int or size < 0:
            raise bad_request("each LFS object needs a sha256 'oid' and a non-negative integer 'size'")
        if size > hub.max_upload_bytes:
            raise ProtocolError(
                413,
                f"{oid}: {size} bytes is over this server's upload limit "
                f"({hub.max_upload_bytes} bytes; see --max-upload-mb)",
            )
        item: dict = {"oid": oid, "size": size, "authenticated": True}
        if not hub.store.has_blob(oid, size):
            sig = hub.auth.sign(f"{repo.type}/{repo.id}/{oid}/{size}/{user.name}", expires)
            api = f"{_base(request)}/api/{repo.type}/{repo.id}"
            query = urlencode({"size": size, "user": user.name, "expires": expires, "sig": sig})
            item["actions"] = {
                "upload": {"href": f"{api}/lfs-upload/{oid}?{query}"},
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
    size_text, user = query.get("size", ""), query.get("user", "")
    hub.auth.check_signature(
        f"{repo.type}/{repo.id}/{oid}/{size_text}/{user}", query.get("expires", ""), query.get("sig", "")
    )
    if not size_text.isdigit() or not size_text.isascii():
        raise bad_request("the upload URL's size is not a non-negative integer: ask the batch endpoint again")
    size = int(size_text)
    declared = request.headers.get("content-length")
    if declared is not None and declared != str(size):
        raise bad_request(f"Content-Length {declared[:20]} differs from the declared size {size}")
    if hub.store.has_blob(oid, size):
        return json_response({})
    writer = hub.store.blob_writer(oid, size)
    try:
        pending: list[bytes] = []
        held = 0
        async for chunk in request.stream():  # hashed and written 1 MiB at a time, in a worker thread
            pending.append(chunk)
            held += len(chunk)
            if held >= _UPLOAD_BATCH:
                await run_in_threadpool(writer.write, b"".join(pending))
                pending, held = [], 0
        await run_in_threadpool(writer.write, b"".join(pending))
        await run_in_threadpool(writer.finish)
    finally:
        writer.abort()
    await _audit(hub, request, "lfs_upload", user, repo, oid=oid, size=size)
    return json_response({})


async def lfs_verify(hub: Hub, request: Request, repo: RepoRef) -> Response:
    """``POST .../lfs-verify`` json ``{oid, size}``: 200 once the object is stored with that size."""
    _writer(hub, request, repo)
    data = await read_json(request)
    oid, size = data.get("oid"), data.get("size")
    if not isinstance(oid, str) or not SHA256_HEX.fullmatch(oid) or type(size) is not int or size < 0:
        raise bad_request("verify needs a sha256 'oid' and an integer 'size'")
    if not hub.store.has_blob(oid, size):
        raise ProtocolError(404, f"LFS object {oid} ({size} bytes) is not stored; upload it again")
    return json_response({})
