"""Read routes of ``medhub serve``: repo info, tree, paths-info, refs, commit history and file downloads."""

from __future__ import annotations

import os
from urllib.parse import parse_qs

import yaml
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from medhub.serve.app import Hub, json_response, read_body
from medhub.serve.protocol import ProtocolError, RepoRef, check_path
from medhub.serve.storage import Commit
from medhub.serve.tree import dir_item, file_item, list_tree, pointer_size

_PATHS_LIMIT = 1000
_INLINE_BYTES = 256 * 1024  # GETs up to this size are read in one go


def _readable(hub: Hub, request: Request, repo: RepoRef) -> dict:
    """Check read access and return the repo's metadata; a private repo looks missing to strangers."""
    user = hub.auth.can_read(request.headers.get("authorization"))
    meta = hub.store.meta(repo)
    if meta.get("private") and user is None:
        raise ProtocolError(404, f"repository {repo.type}/{repo.id} not found", "RepoNotFound")
    return meta


def _checkout(hub: Hub, request: Request, repo: RepoRef, revision: str) -> tuple[dict, Commit]:
    meta = _readable(hub, request, repo)
    commit_id, _ = hub.store.resolve(repo, revision)
    return meta, hub.store.commit(repo, commit_id)


def card_data(hub: Hub, commit: Commit) -> dict | None:
    """The YAML front matter of README.md, or None when there is none (or it does not parse)."""
    entry = commit.files.get("README.md")
    if entry is None or entry["size"] > 1024 * 1024:
        return None
    text = hub.store.read_blob(entry["sha256"]).decode("utf-8", "replace").replace("\r\n", "\n")
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    try:
        data = yaml.safe_load(text[4:end])
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


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
    return json_response(await run_in_threadpool(_info, hub, request, repo, revision))


async def tree(hub: Hub, request: Request, repo: RepoRef, revision: str, path: str) -> Response:
    """``GET /api/{type}s/{repo}/tree/{rev}[/{path}]``: list_repo_files, list_repo_tree, snapshot_download."""
    recursive = request.query_params.get("recursive", "").lower() in ("1", "true")

    def work() -> list[dict]:
        _, commit = _checkout(hub, request, repo, revision)
        return list_tree(commit.files, path, recursive)

    return json_response(await run_in_threadpool(work))


async def paths_info(hub: Hub, request: Request, repo: RepoRef, revision: str) -> Response:
    """``POST /api/{type}s/{repo}/paths-info/{rev}`` (form ``paths=...``): get_paths_info."""
    body = await read_body(request, 1024 * 1024)
    form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=False)
    paths = form.get("paths", [])[:_PATHS_LIMIT]

    def work() -> list[dict]:
        _, commit = _checkout(hub, request, repo, revision)
        out = []
        for path in (check_path(p.strip("/")) for p in paths):
            if path in commit.files:
                out.append(file_item(path, commit.files[path]))
            elif any(p.startswith(path + "/") for p in commit.files):
                out.append(dir_item(path, commit.files))
        return out

    return json_response(await run_in_threadpool(work))


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

    return json_response(await run_in_threadpool(work))


async def commits(hub: Hub, request: Request, repo: RepoRef, revision: str) -> Response:
    """``GET /api/{type}s/{repo}/commits/{rev}``: list_repo_commits, newest first."""

    def work() -> list[dict]:
        _, commit = _checkout(hub, request, repo, revision)
        return [
            {
                "id": c.id,
                "title": c.summary,
                "message": c.description,
                "date": c.date,
                "authors": [{"user": c.author, "avatar": None}],
            }
            for c in hub.store.history(repo, commit.id)
        ]

    return json_response(await run_in_threadpool(work))


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
    return FileResponse(blob, headers=headers, stat_result=stat, media_type="application/octet-stream")
