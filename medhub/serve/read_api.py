"""Read routes of ``medhub serve``: repo info, tree, paths-info, refs, commit history and file downloads."""

from __future__ import annotations

import os
from urllib.parse import parse_qs

import yaml
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from medhub.serve.app import Hub, read_body, threaded_json
from medhub.serve.auth import Auth
from medhub.serve.protocol import ProtocolError, RepoRef, check_path
from medhub.serve.storage import ByteLRU, Commit
from medhub.serve.tree import dir_item, file_item, folder_oids, list_tree, pointer_size

_PATHS_LIMIT = 1000
_INLINE_BYTES = 256 * 1024  # GETs up to this size are read in one go
#: Largest YAML front matter parsed from a README.md, and its deepest nesting.
CARD_MAX_BYTES = 64 * 1024
CARD_MAX_DEPTH = 16
_cards = ByteLRU(8 * 1024 * 1024)  # parsed front matter per (repo, README sha256)


class BlobResponse(FileResponse):
    """A file download read in 1 MiB chunks (Starlette's default of 64 KiB costs one worker-thread
    round trip per 64 KiB, which held large downloads to about 0.15 of a static file server)."""

    chunk_size = 1 << 20


def _readable(hub: Hub, request: Request, repo: RepoRef) -> dict:
    """Check read access and return the repo's metadata; a private repo looks missing to strangers."""
    user = hub.auth.can_read(request.headers.get("authorization"))
    Auth.check_repo(user, repo, "read")
    meta = hub.store.meta(repo)
    if meta.get("private") and user is None:
        raise ProtocolError(404, f"repository {repo.type}/{repo.id} not found", "RepoNotFound")
    return meta


def _checkout(hub: Hub, request: Request, repo: RepoRef, revision: str) -> tuple[dict, Commit]:
    meta = _readable(hub, request, repo)
    commit_id, _ = hub.store.resolve(repo, revision)
    return meta, hub.store.commit(repo, commit_id)


def parse_front_matter(text: str) -> dict | None:
    """The YAML front matter of a model card, or None when there is none or it is not a safe mapping.

    Refused (None): front matter over :data:`CARD_MAX_BYTES`, nested deeper than :data:`CARD_MAX_DEPTH`,
    or using YAML aliases (a few aliases expand to gigabytes once the answer is serialised as JSON).
    The event scan that checks this is iterative, so deep input cannot exhaust the stack.
    """
    text = text.replace("\r\n", "\n")
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---", 3)
    if end < 0 or end > CARD_MAX_BYTES:
        return None
    front = text[4:end]
    try:
        depth = 0
        for event in yaml.parse(front, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                return None
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > CARD_MAX_DEPTH:
                    return None
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        data = yaml.safe_load(front)
    except (yaml.YAMLError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def card_data(hub: Hub, commit: Commit) -> dict | None:
    """The YAML front matter of README.md (see :func:`parse_front_matter`), cached per README content."""
    entry = commit.files.get("README.md")
    if entry is None or entry["size"] > 1024 * 1024:
        return None
    key = (hub.store.root, entry["sha256"])
    cached = _cards.get(key)
    if cached is not None:
        return cached[0]  # type: ignore[index]
    try:
        with hub.store.blob_path(entry["sha256"]).open("rb") as handle:
            head = handle.read(CARD_MAX_BYTES + 8)
    except FileNotFoundError:  # lost content (fsck reports it): no card rather than an error
        return None
    card = parse_front_matter(head.decode("utf-8", "replace"))
    _cards.put(key, (card,), 2048 + 8 * len(head))
    return card


def _info(hub: Hub, request: Request, repo: RepoRef, revision: str) -> dict:
    meta, commit = _checkout(hub, request, repo, revision)
    card = card_data(hub, commit)
    tags = [t for t in (card or {}).get("tags") or [] if isinstance(t, str)]
    if card and isinstance(card.get("license"), str):
        tags.append(f"license:{card['license']}")
    siblings = []
    for path, entry in sorted(commit.files.items()):
        sibling = {"rfilename": path, "size": entry["size"], "blobId": entry["oid"]}
        if entry["lfs"]:
            sibling["lfs"] = {
                "sha256": entry["sha256"],
                "size": entry["size"],
                "pointerSize": pointer_size(entry),
            }
        siblings.append(sibling)
    info = {
        "_id": commit.id[:24],
        "id": repo.id,
        "author": repo.namespace,
        "sha": commit.id,
        "lastModified": commit.date,
        "createdAt": meta["createdAt"],
        "private": meta["private"],
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": tags,
        "siblings": siblings,
    }
    if repo.type == "models":
        info["modelId"] = repo.id
        for key in ("library_name", "pipeline_tag"):
            if card and isinstance(card.get(key), str):
                info[key] = card[key]
    if card is not None:
        info["cardData"] = card
    return info


async def repo_info(hub: Hub, request: Request, repo: RepoRef, revision: str = "main") -> Response:
    """``GET /api/{type}s/{repo}[/revision/{rev}]``: model_info, dataset_info, repo_exists."""
    return await threaded_json(_info, hub, request, repo, revision)


async def tree(hub: Hub, request: Request, repo: RepoRef, revision: str, path: str) -> Response:
    """``GET /api/{type}s/{repo}/tree/{rev}[/{path}]``: list_repo_files, list_repo_tree, snapshot_download."""
    recursive = request.query_params.get("recursive", "").lower() in ("1", "true")

    def work() -> list[dict]:
        _, commit = _checkout(hub, request, repo, revision)
        return list_tree(commit.files, path, recursive)

    return await threaded_json(work)


async def paths_info(hub: Hub, request: Request, repo: RepoRef, revision: str) -> Response:
    """``POST /api/{type}s/{repo}/paths-info/{rev}`` (form ``paths=...``): get_paths_info."""
    hub.auth.can_read(request.headers.get("authorization"))  # refuse a bad token before reading the body
    body = await read_body(request, 1024 * 1024)

    def work() -> list[dict]:
        try:
            form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=_PATHS_LIMIT)
        except ValueError:
            raise ProtocolError(400, f"ask for at most {_PATHS_LIMIT} paths at a time") from None
        paths = [check_path(p.strip("/")) for p in form.get("paths", [])]
        _, commit = _checkout(hub, request, repo, revision)
        oids = folder_oids(commit.files, {p for p in paths if p not in commit.files})
        out = []
        for path in paths:
            if path in commit.files:
                out.append(file_item(path, commit.files[path]))
            elif path in oids:
                out.append(dir_item(path, oids[path]))
        return out

    return await threaded_json(work)


async def refs(hub: Hub, request: Request, repo: RepoRef) -> Response:
    """``GET /api/{type}s/{repo}/refs``: list_repo_refs."""

    def work() -> dict:
        _readable(hub, request, repo)
        found = hub.store.refs(repo)
        out = {
            kind: [
                {"name": n, "ref": f"refs/{prefix}/{n}", "targetCommit": c}
                for n, c in sorted(found[kind].items())
            ]
            for kind, prefix in (("branches", "heads"), ("tags", "tags"))
        }
        out["converts"] = []
        if request.query_params.get("include_prs"):
            out["pullRequests"] = []
        return out

    return await threaded_json(work)


async def commits(hub: Hub, request: Request, repo: RepoRef, revision: str) -> Response:
    """``GET /api/{type}s/{repo}/commits/{rev}``: list_repo_commits, newest first."""

    def work() -> list[dict]:
        _readable(hub, request, repo)
        commit_id, _ = hub.store.resolve(repo, revision)
        return [
            {
                "id": c.id,
                "title": c.summary,
                "message": c.description,
                "date": c.date,
                "authors": [{"user": c.author, "avatar": None}],
            }
            for c in hub.store.history(repo, commit_id, with_files=False)
        ]

    return await threaded_json(work)


async def resolve(hub: Hub, request: Request, repo: RepoRef, revision: str, path: str) -> Response:
    """``HEAD``/``GET /{prefix}{repo}/resolve/{rev}/{path}``: file bytes with the headers the client needs.

    Small whole-file GETs are read in the same worker thread as the lookup (one thread hop); ranges,
    HEAD and large files go through Starlette's ``FileResponse`` (streamed, ``Range`` support).
    """
    small = request.method == "GET" and "range" not in request.headers

    def work() -> tuple[dict, os.stat_result, str, bytes | None]:
        _, commit = _checkout(hub, request, repo, revision)
        entry = commit.files.get(path)
        if entry is None:
            raise ProtocolError(404, f"{path!r} not found in {repo.id} at {revision}", "EntryNotFound")
        blob = hub.store.blob_path(entry["sha256"])
        try:
            stat = os.stat(blob)
            content = blob.read_bytes() if small and stat.st_size <= _INLINE_BYTES else None
        except FileNotFoundError:
            raise ProtocolError(
                500, f"content of {path!r} is missing from the store; run a store check"
            ) from None
        etag = entry["sha256"] if entry["lfs"] else entry["oid"]
        headers = {"X-Repo-Commit": commit.id, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(entry["size"])})
        return headers, stat, str(blob), content

    headers, stat, blob, content = await run_in_threadpool(work)
    if content is not None:
        return Response(content, headers=headers, media_type="application/octet-stream")
    return BlobResponse(blob, headers=headers, stat_result=stat, media_type="application/octet-stream")
