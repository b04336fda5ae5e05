"""``medhub serve`` with the real huggingface_hub client, timm and requests over 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import torch
from hub_fixture import start_server
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import load_file, save_file

SHA = re.compile(r"^[0-9a-f]{40}$")


def _folder(path: Path) -> Path:
    path.mkdir()
    save_file({"w": torch.arange(6000, dtype=torch.float32)}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 3}))
    (path / "README.md").write_text("---\nlicense: mit\ntags: [medical, x-ray]\n---\n# A test model\n")
    (path / "sub").mkdir()
    (path / "sub" / "notes.txt").write_text("nested")
    return path


@pytest.fixture(scope="module")
def pushed(hub_server, tmp_path_factory):
    """A repo with two commits: c1 (the folder) and c2 (one more file); returns (repo_id, c1, c2, folder)."""
    api = HfApi(token=hub_server.token)
    repo = hub_server.new_repo_id("client")
    folder = _folder(tmp_path_factory.mktemp("up") / "model")
    api.create_repo(repo)
    c1 = api.upload_folder(folder_path=folder, repo_id=repo, commit_message="first weights").oid
    (folder / "extra.txt").write_text("v2")
    c2 = api.upload_folder(folder_path=folder, repo_id=repo).oid
    (folder / "extra.txt").unlink()
    return repo, c1, c2, folder


def test_commits_have_git_style_ids_and_history(hub, pushed):
    repo, c1, c2, _ = pushed
    assert SHA.match(c1) and SHA.match(c2) and c1 != c2
    commits = HfApi().list_repo_commits(repo)
    assert [c.commit_id for c in commits[:2]] == [c2, c1]
    assert len(commits) == 3 and commits[-1].title == "initial commit"
    assert commits[1].title == "first weights" and commits[1].authors == ["medhub"]


def test_model_info_lists_siblings_and_card_data(hub, pushed):
    repo, _, c2, folder = pushed
    info = HfApi().model_info(repo, files_metadata=True)
    assert info.sha == c2
    names = {s.rfilename: s for s in info.siblings}
    assert set(names) == {
        ".gitattributes",
        "model.safetensors",
        "config.json",
        "README.md",
        "sub/notes.txt",
        "extra.txt",
    }
    weights = names["model.safetensors"]
    assert weights.lfs is not None and weights.lfs.size == (folder / "model.safetensors").stat().st_size
    assert names["config.json"].lfs is None
    assert info.card_data["license"] == "mit" and "medical" in info.tags
    assert sorted(HfApi().list_repo_files(repo)) == sorted(names)


def test_downloads_at_main_and_at_a_commit(hub, pushed):
    repo, c1, _, folder = pushed
    for revision in ("main", c1):
        path = hf_hub_download(repo, "model.safetensors", revision=revision)
        assert torch.equal(load_file(path)["w"], torch.arange(6000, dtype=torch.float32))
        assert Path(hf_hub_download(repo, "sub/notes.txt", revision=revision)).read_text() == "nested"
    old = Path(snapshot_download(repo, revision=c1))
    new = Path(snapshot_download(repo))
    assert not (old / "extra.txt").exists() and (new / "extra.txt").read_text() == "v2"
    assert (old / "config.json").read_bytes() == (folder / "config.json").read_bytes()
    assert old.name == c1


def test_offline_reads_from_the_cache_in_a_fresh_process(hub, pushed):
    repo, c1, _, _ = pushed
    hf_hub_download(repo, "config.json")
    hf_hub_download(repo, "config.json", revision=c1)
    code = (
        "import sys; from huggingface_hub import hf_hub_download as d;"
        f"print(open(d('{repo}', 'config.json')).read() == open(d('{repo}', 'config.json', revision='{c1}')).read())"
    )
    from huggingface_hub import constants

    cache = constants.HF_HUB_CACHE  # fixed when huggingface_hub was imported
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"


def test_refs_tags_branches_and_missing_things(hub, pushed):
    repo, c1, c2, _ = pushed
    api = HfApi()
    api.create_tag(repo, tag="v1", revision=c1)
    api.create_branch(repo, branch="dev/exp", revision=c1)
    refs = api.list_repo_refs(repo)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": c2, "dev/exp": c1}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", c1)]
    assert not Path(snapshot_download(repo, revision="v1")).joinpath("extra.txt").exists()
    assert api.list_repo_commits(repo, revision="dev/exp")[0].commit_id == c1
    with pytest.raises(HfHubHTTPError):
        api.create_tag(repo, tag="v1")  # exists: 409
    api.delete_branch(repo, branch="dev/exp")
    assert [b.name for b in api.list_repo_refs(repo).branches] == ["main"]
    assert not api.file_exists(repo, "nope.txt")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "nope.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, "config.json", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(hub.new_repo_id("missing"))


def test_tree_and_paths_info(hub, pushed):
    repo, _, _, _ = pushed
    api = HfApi()
    top = {e.path: type(e).__name__ for e in api.list_repo_tree(repo)}
    assert top["sub"] == "RepoFolder" and "sub/notes.txt" not in top
    deep = {e.path for e in api.list_repo_tree(repo, recursive=True)}
    assert {"sub", "sub/notes.txt", "model.safetensors"} <= deep
    infos = {i.path: i for i in api.get_paths_info(repo, ["model.safetensors", "sub", "missing"])}
    assert set(infos) == {"model.safetensors", "sub"} and infos["model.safetensors"].lfs is not None
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(repo, path_in_repo="missing-folder"))


def test_parent_commit_check_and_deletions(hub):
    api = HfApi()
    repo = hub.new_repo_id("parent")
    api.create_repo(repo)
    head = api.upload_file(path_or_fileobj=b"a", path_in_repo="a/x.txt", repo_id=repo).oid
    api.upload_file(path_or_fileobj=b"b", path_in_repo="a/y.txt", repo_id=repo, parent_commit=head)
    with pytest.raises(HfHubHTTPError) as err:  # head moved: 412
        api.upload_file(path_or_fileobj=b"c", path_in_repo="c.txt", repo_id=repo, parent_commit=head)
    assert err.value.response.status_code == 412
    api.delete_file("a/x.txt", repo)
    with pytest.raises(EntryNotFoundError):
        api.delete_file("a/x.txt", repo)
    api.delete_folder("a", repo)
    assert api.list_repo_files(repo) == [".gitattributes"]


def test_resolve_headers_and_byte_ranges(hub, pushed):
    repo, c1, c2, folder = pushed
    data = (folder / "model.safetensors").read_bytes()
    auth = {"Authorization": f"Bearer {hub.token}"}
    url = f"{hub.endpoint}/{repo}/resolve/main/model.safetensors"
    head = requests.head(url, headers=auth, timeout=30)
    assert head.headers["X-Repo-Commit"] == c2 and head.headers["X-Linked-Size"] == str(len(data))
    assert (
        head.headers["ETag"].strip('"') == head.headers["X-Linked-Etag"].strip('"')
        and len(head.headers["ETag"]) == 66
    )
    part = requests.get(url, headers={**auth, "Range": "bytes=100-"}, timeout=30)
    assert part.status_code == 206 and part.content == data[100:]
    assert requests.get(url, headers={**auth, "Range": "bytes=10-19"}, timeout=30).content == data[10:20]


def test_timm_push_and_load_through_hf_hub_names(hub, tmp_path):
    import timm
    from timm.models import push_to_hf_hub

    repo = hub.new_repo_id("timm")
    model = timm.create_model("test_resnet", num_classes=3).eval()
    push_to_hf_hub(model, repo)
    loaded = timm.create_model(f"hf-hub:{repo}", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)


def test_dataset_repos(hub, tmp_path):
    api = HfApi()
    repo = hub.new_repo_id("data")
    api.create_repo(repo, repo_type="dataset")
    api.upload_file(
        path_or_fileobj=b"a,b\n1,2\n", path_in_repo="data/train.csv", repo_id=repo, repo_type="dataset"
    )
    assert Path(hf_hub_download(repo, "data/train.csv", repo_type="dataset")).read_bytes() == b"a,b\n1,2\n"
    assert "data/train.csv" in {s.rfilename for s in api.dataset_info(repo).siblings}
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(repo)  # same id, other type


def test_regular_only_mode_works_with_xet_enabled(tmp_path):
    """With --regular-only every file goes inside the commit, so the client never tries Xet."""
    server = start_server(tmp_path / "root", extra_args=("--regular-only",))
    try:
        (tmp_path / "up").mkdir()
        save_file({"w": torch.ones(10)}, str(tmp_path / "up" / "model.safetensors"))
        code = (
            "from huggingface_hub import HfApi, hf_hub_download; import sys;"
            "api = HfApi(); api.create_repo('lab/reg');"
            "api.upload_folder(folder_path=sys.argv[1], repo_id='lab/reg');"
            "print(open(hf_hub_download('lab/reg', 'model.safetensors'), 'rb').read() == open(sys.argv[1] + '/model.safetensors', 'rb').read())"
        )
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_XET"}
        env.update(HF_ENDPOINT=server.endpoint, HF_TOKEN=server.token)
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "up")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().endswith("True")
    finally:
        server.stop()
