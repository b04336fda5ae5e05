"""medhub pack / unpack / mirror across two "machines": separate HOME, MEDHUB_HOME and Hugging Face caches.

Machine A packs checkpoints that it downloads from real servers on 127.0.0.1: a MoCo v2 checkpoint (the
layout facebookresearch/moco saves, DataParallel prefix, query/key encoders) served over HTTP, a repo on
a real ``medhub serve`` pinned by commit, a model folder and an ``hf-hub:`` repo. Machine B runs in fresh
interpreters with ``HF_HUB_OFFLINE=1`` and no reachable server: it unpacks, loads, and its outputs on a
real chest X-ray must equal A's bit for bit. The same through ``--to-store`` + ``medhub serve`` +
``HF_ENDPOINT``. Hostile archives (traversal, links, devices, extra members, absurd sizes, tampered or
truncated bytes) are refused with one line naming the member, and nothing is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from http_files import FileServer
from hub_fixture import start_server
from original_models import moco_checkpoint
from PIL import Image

import medhub
from medhub.cli import main as cli
from medhub.export import write_model_folder

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
MOCO_ID = "resnet18_mocov2_packtest"
HUB_ID = "test_resnet_packtest"
PREP = {
    "input_size": [3, 64, 64],
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "interpolation": "bilinear",
    "crop_pct": 1.0,
}
OPEN = {
    "weights": "Apache-2.0",
    "data_terms": "NIH ChestX-ray14: no restrictions on use, attribution required",
}
NC = {
    "weights": "CC-BY-NC-4.0",
    "data_terms": "ImageNet terms of access: non-commercial research and educational use",
}


def body(
    arch: str, sources: list[dict], *, num_classes: int, licence: dict, first_conv: str = "conv1"
) -> dict:
    return {
        "arch": arch, "family": "resnet", "objective": "mocov2" if arch == "resnet18" else "supervised",
        "lineage": [{"dataset": "testdata", "objective": "mocov2" if arch == "resnet18" else "supervised"}],
        "sources": sources, "preprocessing": PREP,
        "head": {"classifier": "fc", "first_conv": first_conv, "num_classes": num_classes}, "licence": licence,
    }  # fmt: skip


@pytest.fixture(scope="module")
def moco_file(tmp_path_factory):
    """A served folder with a MoCo v2 checkpoint (``.pth.tar``) and its sha256."""
    folder = tmp_path_factory.mktemp("served")
    checkpoint, _ = moco_checkpoint()
    torch.save(checkpoint, folder / "moco_v2_200ep.pth.tar")
    return folder, hashlib.sha256((folder / "moco_v2_200ep.pth.tar").read_bytes()).hexdigest()


@pytest.fixture
def site_a(hub, tmp_path, monkeypatch, moco_file):
    """Machine A: a registry overlay whose two ids come from a file server and the test Hub, plus a
    model folder and a Hub repo to pack by name. Yields the names to pack and the overlay path."""
    import timm
    from huggingface_hub import HfApi

    folder, digest = moco_file
    torch.manual_seed(3)
    model = timm.create_model("test_resnet", num_classes=3).eval()
    up = write_model_folder(tmp_path / "up", model.state_dict(), arch="test_resnet", num_classes=3,
                            pretrained_cfg={**model.pretrained_cfg, "input_size": (3, 64, 64)})  # fmt: skip
    api = HfApi(endpoint=hub.endpoint)
    repo = hub.new_repo_id("pack")
    api.create_repo(repo)
    commit = api.upload_folder(folder_path=str(up), repo_id=repo).oid
    torch.manual_seed(4)
    own = timm.create_model("test_resnet", num_classes=2).eval()
    local = write_model_folder(tmp_path / "cxr_local", own.state_dict(), arch="test_resnet", num_classes=2,
                               pretrained_cfg={**own.pretrained_cfg, "input_size": (3, 64, 64)},
                               extra={"licence": OPEN})  # fmt: skip
    torch.manual_seed(5)
    other = timm.create_model("test_resnet", num_classes=4).eval()
    other_up = write_model_folder(tmp_path / "other", other.state_dict(), arch="test_resnet", num_classes=4,
                                  pretrained_cfg={**other.pretrained_cfg, "input_size": (3, 64, 64)},
                                  extra={"licence": OPEN})  # fmt: skip
    other_repo = hub.new_repo_id("packhf")
    api.create_repo(other_repo)
    api.upload_folder(folder_path=str(other_up), repo_id=other_repo)
    with FileServer(folder) as server:
        checkpoints = {
            MOCO_ID: body("resnet18", [{"kind": "url", "url": server.url("moco_v2_200ep.pth.tar"), "format": "moco",
                                        "sha256": digest}], num_classes=0, licence=NC),
            HUB_ID: body("test_resnet", [{"kind": "medhub_hf", "repo": repo, "revision": commit,
                                          "filename": "model.safetensors", "format": "timm"}],
                         num_classes=3, licence=OPEN, first_conv="conv1.0"),
        }  # fmt: skip
        overlay = tmp_path / "site-registry.yaml"
        overlay.write_text(yaml.safe_dump({"version": 1, "checkpoints": checkpoints}))
        monkeypatch.setenv("MEDHUB_REGISTRY", str(overlay))
        yield {"ids": [MOCO_ID, HUB_ID], "folder": local, "hf": f"hf-hub:{other_repo}", "overlay": overlay,
               "server": server}  # fmt: skip


def stop(server: FileServer) -> None:
    """Stop a file server for good: connections are refused from now on."""
    server.httpd.shutdown()
    server.httpd.server_close()


def xray() -> torch.Tensor:
    """A real chest X-ray (NIH ChestX-ray14 subset, ../shared/data) as a 1x3x64x64 batch."""
    from conftest import DATA

    image = Image.open(sorted((DATA / "nih_cxr14_1000_64px").rglob("*.png"))[0])
    return medhub.transforms(
        {"input_size": (3, 64, 64), **{k: PREP[k] for k in ("mean", "std", "crop_pct")}}
    )(image).unsqueeze(0)


def outputs(names: list[str]) -> dict[str, torch.Tensor]:
    """Outputs of medhub.load(name) on the X-ray, in this process (machine A)."""
    x = xray()
    with torch.no_grad():
        return {name: medhub.load(name).eval()(x) for name in names}


def machine(root: Path, **extra: str) -> dict[str, str]:
    """Environment of another machine: its own HOME, config, caches; no reachable Hub; offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MEDHUB_", "XDG_"))}
    env.update(HOME=str(root), XDG_CONFIG_HOME=str(root / ".config"), XDG_CACHE_HOME=str(root / ".cache"),
               HF_HOME=str(root / "hf"), MEDHUB_HOME=str(root / "medhub"), HF_HUB_OFFLINE="1",
               HF_HUB_DISABLE_XET="1", HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(ROOT))  # fmt: skip
    env.update(extra)
    return env


def run_medhub(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medhub", *args], env=env, capture_output=True, text=True, timeout=600
    )


LOAD = r"""
import sys, json, torch, medhub
from PIL import Image
torch.set_num_threads(1)
image = Image.open(sys.argv[1])
x = medhub.transforms({"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.25,) * 3, "crop_pct": 1.0})(image)[None]
out = {}
for name in sys.argv[3:]:
    model = medhub.load(name).eval()
    with torch.no_grad():
        out[name] = model(x)
    print(name, model.medhub_load_report.source)
from safetensors.torch import save_file
save_file(out, sys.argv[2])
"""


def load_elsewhere(env: dict[str, str], names: list[str], out: Path) -> tuple[dict[str, torch.Tensor], str]:
    """medhub.load(name) for each name in a fresh interpreter with ``env``; (outputs, stdout)."""
    from conftest import DATA
    from safetensors.torch import load_file

    image = sorted((DATA / "nih_cxr14_1000_64px").rglob("*.png"))[0]
    done = subprocess.run([sys.executable, "-c", LOAD, str(image), str(out), *names], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(str(out)), done.stdout


def pack_cli(*args: str) -> tuple[int, str]:
    import contextlib

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli(["pack", *args])
    return code, buffer.getvalue()


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and mtime (to show that nothing changed)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


# ---- the round trips ---------------------------------------------------------------------------------------


def test_pack_on_a_unpack_offline_on_b_loads_bit_for_bit(site_a, tmp_path, monkeypatch, capsys):
    names = [*site_a["ids"], str(site_a["folder"]), site_a["hf"]]
    archive = tmp_path / "site.tar"
    code, out = pack_cli(*names, "-o", str(archive), "--accept-terms", "--with-tasks")
    assert code == 0, out
    assert "packed resnet18_mocov2_packtest (weights from url http://127.0.0.1" in out and "sha256 " in out
    content = members(archive)
    manifest = json.loads(content["manifest.json"])
    ids = [c["id"] for c in manifest["checkpoints"]]
    folder_id, hf_id = ids[2], ids[3]
    assert ids[:2] == site_a["ids"] and folder_id == "cxr_local" and hf_id == site_a["hf"].split("/")[-1]
    assert list(content)[0] == "manifest.json" and manifest["medhub_version"] == medhub.__version__
    assert manifest["created_from"] == "newest input file"
    for m in manifest["members"]:  # every member's size and sha256, and nothing else in the archive
        assert (
            hashlib.sha256(content[m["path"]]).hexdigest() == m["sha256"]
            and len(content[m["path"]]) == m["size"]
        )
    assert sorted(content) == sorted(["manifest.json", *(m["path"] for m in manifest["members"])])
    for model_id in ids:
        for name in ("model.safetensors", "config.json", "README.md", "registry.yaml"):
            assert f"checkpoints/{model_id}/{name}" in content
    assert "tasks/chestxray14.yaml" in content and not any(p.endswith((".npz", ".png")) for p in content)
    moco = manifest["checkpoints"][0]
    assert moco["terms_accepted"] and "weights licence 'CC-BY-NC-4.0'" in moco["redistribution_limits"]
    assert (
        moco["registry_entry"]["licence"] == NC
        and moco["registry_entry"]["lineage"][0]["objective"] == "mocov2"
    )
    assert not manifest["checkpoints"][1]["redistribution_limits"] and manifest["terms_accepted"]
    card = content[f"checkpoints/{MOCO_ID}/README.md"].decode()
    assert "CC-BY-NC-4.0" in card and "not a medical device" in card

    # byte-reproducible: packing again from the caches gives the same bytes
    again = tmp_path / "again.tar"
    assert pack_cli(*names, "-o", str(again), "--accept-terms", "--with-tasks")[0] == 0
    assert again.read_bytes() == archive.read_bytes()

    expected = outputs([*site_a["ids"], str(site_a["folder"]), site_a["hf"]])
    expected = dict(zip([*site_a["ids"], folder_id, hf_id], expected.values(), strict=True))

    # machine B: same registry overlay (its sources unreachable), nothing cached, offline
    b = machine(tmp_path / "b", MEDHUB_REGISTRY=str(site_a["overlay"]))
    done = run_medhub(b, "unpack", str(archive), "--cache")
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stdout and "now works offline" in done.stdout
    got, stdout = load_elsewhere(b, list(expected), tmp_path / "b-out.safetensors")
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    assert f"{MOCO_ID} local " in stdout  # the unpacked file, not the (unreachable) original source
    overlay = yaml.safe_load(
        (tmp_path / "b" / ".config" / "medhub" / "registry.d" / "packs.yaml").read_text()
    )
    assert set(overlay["mirrors"]) == set(site_a["ids"]) and set(overlay["checkpoints"]) == {folder_id, hf_id}
    assert overlay["checkpoints"][folder_id]["licence"] == OPEN

    # unpacking the same archive twice changes nothing
    before = tree_state(tmp_path / "b")
    done = run_medhub(b, "unpack", str(archive))
    assert done.returncode == 0 and "already installed: nothing changed" in done.stdout
    assert tree_state(tmp_path / "b") == before

    # a third machine with another medhub registry (the two ids unknown there): full entries instead of mirrors
    c = machine(tmp_path / "c")
    assert run_medhub(c, "unpack", str(archive)).returncode == 0
    got, _ = load_elsewhere(c, [MOCO_ID, folder_id], tmp_path / "c-out.safetensors")
    assert torch.equal(got[MOCO_ID], expected[MOCO_ID]) and torch.equal(got[folder_id], expected[folder_id])


def test_pack_is_identical_on_another_machine_with_source_date_epoch(site_a, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764460800")  # 2025-11-30T00:00:00Z
    first, second = tmp_path / "a.tar", tmp_path / "a2.tar"
    assert pack_cli(*site_a["ids"], "-o", str(first), "--accept-terms")[0] == 0
    other = tmp_path / "other-machine"  # fresh caches: everything is downloaded and converted again
    monkeypatch.setenv("HOME", str(other))
    monkeypatch.setenv("MEDHUB_HOME", str(other / "medhub"))
    monkeypatch.setenv("HF_HOME", str(other / "hf"))
    assert pack_cli(*site_a["ids"], "-o", str(second), "--accept-terms")[0] == 0
    assert first.read_bytes() == second.read_bytes()
    manifest = json.loads(members(first)["manifest.json"])
    assert manifest["created"] == "2025-11-30T00:00:00Z" and manifest["created_from"] == "SOURCE_DATE_EPOCH"
    with tarfile.open(first) as tar:
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in tar} == {
            (1764460800, 0, 0, "", "", 0o644)
        }


def test_unpack_to_store_then_load_through_medhub_serve(site_a, tmp_path):
    archive = tmp_path / "site.tar"
    assert pack_cli(*site_a["ids"], str(site_a["folder"]), "-o", str(archive), "--accept-terms")[0] == 0
    expected = outputs([*site_a["ids"], str(site_a["folder"])])
    expected["cxr_local"] = expected.pop(str(site_a["folder"]))

    admin = machine(tmp_path / "admin", MEDHUB_REGISTRY=str(site_a["overlay"]))
    store, site_overlay = tmp_path / "store", tmp_path / "medhub-site.yaml"
    done = run_medhub(
        admin, "unpack", str(archive), "--to-store", str(store), "--overlay", str(site_overlay), "--json"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    pinned = yaml.safe_load(site_overlay.read_text())
    commit = pinned["mirrors"][MOCO_ID][0]["revision"]
    assert result["locations"][MOCO_ID] == f"medhub/{MOCO_ID}@{commit}"
    refs = json.loads((store / "repos" / "models" / "medhub" / MOCO_ID / "refs.json").read_text())
    assert [t for t, c in refs["tags"].items() if c == commit and t.startswith("medhub-")]
    assert pinned["checkpoints"]["cxr_local"]["sources"][0]["kind"] == "medhub_hf"

    server = start_server(store)
    try:
        again = run_medhub(
            admin, "unpack", str(archive), "--to-store", str(store), "--overlay", str(site_overlay), "--json"
        )
        assert json.loads(again.stdout)["written"] == 0 and not json.loads(again.stdout)["overlay_changed"]
        assert json.loads((store / "repos" / "models" / "medhub" / MOCO_ID / "refs.json").read_text()) == refs
        # a workstation of the site: online to the site's Hub only, the overlay copied in, empty caches
        ws = machine(tmp_path / "ws", MEDHUB_REGISTRY=f"{site_a['overlay']}{os.pathsep}{site_overlay}",
                     HF_ENDPOINT=server.endpoint, HF_TOKEN=server.token)  # fmt: skip
        ws.pop("HF_HUB_OFFLINE")
        stop(site_a["server"])  # the original URL is gone: only the site Hub can serve
        got, stdout = load_elsewhere(ws, list(expected), tmp_path / "ws-out.safetensors")
    finally:
        server.stop()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    assert f"{MOCO_ID} medhub_hf medhub/{MOCO_ID}@{commit[:7]}" in stdout


# ---- licences ----------------------------------------------------------------------------------------------


def test_restricted_terms_need_accept_terms(site_a, tmp_path, capsys):
    archive = tmp_path / "x.tar"
    assert cli(["pack", MOCO_ID, "-o", str(archive)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weights licence 'CC-BY-NC-4.0'" in err and "--accept-terms" in err
    assert "Traceback" not in err and not archive.exists()
    code, _ = pack_cli(HUB_ID, "-o", str(archive))  # Apache-2.0 weights, unrestricted data: no flag needed
    assert code == 0
    manifest = json.loads(members(archive)["manifest.json"])
    assert manifest["terms_accepted"] is False and manifest["checkpoints"][0]["redistribution_limits"] == []


def test_registry_licences_are_classified():
    from medhub.pack.contents import redistribution_limits
    from medhub.registry import load_registry
    from medhub.schema import Licence

    registry = load_registry()
    limits = redistribution_limits(registry.get_model("resnet50_imagenet1k").licence)
    assert limits == ["data terms 'ImageNet terms of access: non-commercial research and educational use'"]
    assert redistribution_limits(Licence(weights="MIT", data_terms="CC-BY-4.0")) == []
    assert redistribution_limits(Licence(weights="ASU GitHub Project License (non-commercial)"))
    assert "not recorded" in redistribution_limits(Licence())[0]


# ---- hostile and damaged archives --------------------------------------------------------------------------


@pytest.fixture
def small_pack(site_a, tmp_path) -> Path:
    archive = tmp_path / "small.tar"
    assert pack_cli(HUB_ID, "-o", str(archive))[0] == 0
    return archive


def rebuild(source: Path, target: Path, edit) -> Path:
    """Copy the tar member by member, letting ``edit(members)`` change the list of (TarInfo, bytes)."""
    with tarfile.open(source) as tar:
        items = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    items = edit(items)
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in items:
            info.size = len(data) if info.isreg() and data is not None else info.size
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return target


def _add(info_kwargs: dict, data: bytes | None = None):
    def edit(items):
        info = tarfile.TarInfo(info_kwargs.pop("name"))
        for key, value in info_kwargs.items():
            setattr(info, key, value)
        return [*items, (info, data)]

    return edit


def _tamper(items):
    out = []
    for info, data in items:
        if info.name.endswith("model.safetensors"):
            data = data[:-1] + bytes([data[-1] ^ 1])
        out.append((info, data))
    return out


HOSTILE = {
    "traversal": (_add({"name": "../evil.txt"}, b"x"), "member '../evil.txt' has a '..' part (path traversal)"),
    "absolute": (_add({"name": "/tmp/evil.txt"}, b"x"), "has an absolute path"),
    "symlink": (_add({"name": "checkpoints/link", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}), "is a symbolic link (to '/etc/passwd')"),
    "hardlink": (_add({"name": "checkpoints/hard", "type": tarfile.LNKTYPE, "linkname": "manifest.json"}), "is a hard link"),
    "device": (_add({"name": "checkpoints/dev", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}), "is a device file"),
    "extra member": (_add({"name": "checkpoints/extra.py"}, b"print('hi')"), "member 'checkpoints/extra.py' is not listed in the manifest"),
    "tampered": (_tamper, "model.safetensors' has sha256"),
}  # fmt: skip


@pytest.mark.parametrize("kind", [*HOSTILE, "huge size", "truncated", "manifest not first"])
def test_hostile_or_damaged_archive_is_refused_and_nothing_is_written(small_pack, tmp_path, kind, capsys):
    bad = tmp_path / f"{kind.replace(' ', '_')}.tar"
    if kind in HOSTILE:
        edit, expected = HOSTILE[kind]
        rebuild(small_pack, bad, edit)
    elif kind == "huge size":
        data = small_pack.read_bytes()
        with tarfile.open(small_pack) as tar:
            last = tar.getmembers()[-1]
        end = (
            last.offset_data + -(-last.size // 512) * 512
        )  # where the zero blocks that end the archive begin
        header = tarfile.TarInfo("checkpoints/huge.bin")
        header.size = 10**15
        bad.write_bytes(data[:end] + header.tobuf(tarfile.PAX_FORMAT) + b"\0" * 512)
        expected = "member 'checkpoints/huge.bin' declares 1000000000000000 bytes, more than the"
    elif kind == "truncated":
        data = small_pack.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        expected = "truncated"
    else:
        rebuild(small_pack, bad, lambda items: items[1:] + items[:1])
        expected = "its first member must be manifest.json"
    home = Path(os.environ["HOME"])  # this test's own HOME: caches, config and overlays all live under it
    before = tree_state(home)
    for args in (
        ["--cache"],
        ["--to-store", str(home / "store")],
        ["--to-store", str(home / "s2"), "--overlay", str(home / "o.yaml")],
    ):
        assert cli(["unpack", str(bad), *args]) == 2
        out, err = capsys.readouterr()
        assert expected in err and "nothing was written" in err and err.count("\n") == 1 and not out, err
        assert tree_state(home) == before
    assert not (tmp_path.parent / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


# ---- mirror ------------------------------------------------------------------------------------------------


def test_mirror_publishes_skips_unchanged_and_reports_failures(site_a, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    site = start_server(tmp_path / "site")
    try:
        registry = yaml.safe_load(site_a["overlay"].read_text())
        broken = dict(registry["checkpoints"][MOCO_ID])
        broken["sources"] = [{"kind": "url", "url": site_a["server"].url("gone.pth.tar"), "format": "moco"}]
        registry["checkpoints"]["resnet18_mocov2_packtest_gone"] = broken
        site_a["overlay"].write_text(yaml.safe_dump(registry))
        (tmp_path / "tokens").write_text(site.token + "\n")
        overlay = tmp_path / "medhub-site.yaml"
        args = ["mirror", "*packtest*", "--endpoint", site.endpoint, "--token-file", str(tmp_path / "tokens"),
                "--overlay", str(overlay), "--accept-terms"]  # fmt: skip
        assert cli(args) == 1
        out, err = capsys.readouterr()
        assert "2 mirrored (2 uploaded, 0 unchanged), 1 failed" in out
        assert "failed:" in err and "resnet18_mocov2_packtest_gone: no source" in err and "HTTP 404" in err
        pinned = yaml.safe_load(overlay.read_text())["mirrors"]
        assert set(pinned) == {MOCO_ID, HUB_ID}
        api = HfApi(endpoint=site.endpoint, token=site.token)
        commits = len(api.list_repo_commits(f"medhub/{MOCO_ID}"))
        assert {"model.safetensors", "config.json", "README.md"} <= set(
            api.list_repo_files(f"medhub/{MOCO_ID}")
        )

        assert cli(args) == 1  # the same run again: nothing new is uploaded
        assert "2 mirrored (0 uploaded, 2 unchanged), 1 failed" in capsys.readouterr()[0]
        assert len(api.list_repo_commits(f"medhub/{MOCO_ID}")) == commits
        assert yaml.safe_load(overlay.read_text())["mirrors"] == pinned

        expected = outputs([MOCO_ID, HUB_ID])
        ws = machine(tmp_path / "ws", MEDHUB_REGISTRY=f"{site_a['overlay']}{os.pathsep}{overlay}",
                     HF_ENDPOINT=site.endpoint, HF_TOKEN=site.token)  # fmt: skip
        ws.pop("HF_HUB_OFFLINE")
        stop(site_a["server"])
        got, stdout = load_elsewhere(ws, [MOCO_ID, HUB_ID], tmp_path / "ws.safetensors")
    finally:
        site.stop()
    assert torch.equal(got[MOCO_ID], expected[MOCO_ID]) and torch.equal(got[HUB_ID], expected[HUB_ID])
    assert f"{MOCO_ID} medhub_hf medhub/{MOCO_ID}@{pinned[MOCO_ID][0]['revision'][:7]}" in stdout


def test_mirror_to_an_unreachable_hub_stops_before_converting(site_a, tmp_path, capsys):
    from hub_fixture import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    assert (
        cli(
            [
                "mirror",
                "*packtest*",
                "--endpoint",
                endpoint,
                "--accept-terms",
                "--overlay",
                str(tmp_path / "o.yaml"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "Connection refused" in err
        and "nothing was mirrored" in err
        and endpoint in err
    )
    assert site_a["server"].requests == [] and not (tmp_path / "o.yaml").exists()


def test_with_tasks_carries_task_descriptions_and_adds_unknown_ones(tmp_path, monkeypatch, capsys):
    """A site task defined on A (an overlay) reaches B's registry through the pack; data never travels."""
    import timm

    from medhub.registry import clear_cache, load_registry

    torch.manual_seed(6)
    model = timm.create_model("test_resnet", num_classes=2).eval()
    folder = write_model_folder(tmp_path / "cxr_site", model.state_dict(), arch="test_resnet", num_classes=2,
                                pretrained_cfg=model.pretrained_cfg, extra={"licence": OPEN})  # fmt: skip
    task = load_registry().get_task("pneumoniamnist").model_dump(mode="json", exclude={"id"})
    task["name"] = "Site pneumonia set"
    overlay = tmp_path / "tasks.yaml"
    overlay.write_text(yaml.safe_dump({"version": 1, "tasks": {"site_pneumonia": task}}))
    monkeypatch.setenv("MEDHUB_REGISTRY", str(overlay))
    clear_cache()
    archive = tmp_path / "tasks.tar"
    assert pack_cli(str(folder), "-o", str(archive), "--with-tasks")[0] == 0
    content = members(archive)
    manifest = json.loads(content["manifest.json"])
    assert "site_pneumonia" in manifest["tasks"] and "tasks/site_pneumonia.yaml" in content
    assert not any(name.endswith((".npz", ".png", ".dcm")) for name in content)  # descriptions only

    b = tmp_path / "b"  # machine B in this process: its own HOME, config and caches, offline
    for name, value in {
        "HOME": b,
        "XDG_CONFIG_HOME": b / ".config",
        "MEDHUB_HOME": b / "medhub",
        "HF_HOME": b / "hf",
    }.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("MEDHUB_REGISTRY")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clear_cache()
    assert cli(["unpack", str(archive)]) == 0
    registry = load_registry()
    assert registry.get_task("site_pneumonia").name == "Site pneumonia set"
    assert registry.get_task("site_pneumonia").layout == load_registry().get_task("pneumoniamnist").layout
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(medhub.load("cxr_site").eval()(x), model(x))


# ---- archives whose manifest and members agree but whose contents are malformed (review) -------------------


@pytest.fixture
def folder_pack(tmp_path) -> Path:
    """A pack of one tiny model folder (no servers): the base of the consistent-but-malformed archives."""
    import timm

    model = timm.create_model("test_resnet", num_classes=2)
    folder = tmp_path / "tiny_packtest"
    write_model_folder(folder, model.state_dict(), arch="test_resnet", num_classes=2,
                       pretrained_cfg=model.pretrained_cfg, extra={"licence": {"weights": "MIT"}})  # fmt: skip
    archive = tmp_path / "tiny.tar"
    assert pack_cli(str(folder), "-o", str(archive))[0] == 0
    return archive


def consistent(source: Path, target: Path, edit_members=None, edit_manifest=None, manifest_raw=None) -> Path:
    """Rewrite a pack with edited members and/or manifest, the manifest's sizes and sha256s made to agree."""
    files = members(source)
    manifest = json.loads(files.pop("manifest.json"))
    if edit_members:
        edit_members(files)
    manifest["members"] = [
        {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in sorted(files.items())
    ]  # fmt: skip
    if edit_manifest:
        edit_manifest(manifest)
    items = [("manifest.json", manifest_raw if manifest_raw is not None else json.dumps(manifest).encode())]
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in items + sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return target


def _set_member(suffix: str, data: bytes):
    def edit(files):
        for name in files:
            if name.endswith(suffix):
                files[name] = data

    return edit


def _set_files(value):
    def edit(manifest):
        manifest["checkpoints"][0]["files"] = value

    return edit


MALFORMED = {
    "registry.yaml not YAML": (dict(edit_members=_set_member("registry.yaml", b"checkpoints: [unclosed\n  - : :\n")), "registry.yaml"),
    "registry.yaml not UTF-8": (dict(edit_members=_set_member("registry.yaml", b"\xff\xfe\x00bad")), "registry.yaml"),
    "registry.yaml python tag": (dict(edit_members=_set_member("registry.yaml", b"!!python/object/apply:os.system ['true']\n")), "registry.yaml"),
    "files not a mapping": (dict(edit_manifest=_set_files("x")), "files"),
    "file member not a path": (dict(edit_manifest=_set_files({"model.safetensors": ["x"]})), "lacks model.safetensors"),
    "manifest nested too deep": (dict(manifest_raw=b"[" * 200000 + b"]" * 200000), "manifest.json"),
}  # fmt: skip


@pytest.mark.parametrize("kind", [*MALFORMED, "tail cut off", "junk after the end"])
def test_malformed_but_consistent_archive_is_one_line_and_nothing_is_written(
    folder_pack, tmp_path, kind, capsys
):
    """Contents an attacker controls (the manifest is not signed) never crash unpack: one line, exit 2."""
    bad = tmp_path / "bad.tar"
    if kind in MALFORMED:
        kwargs, expected = MALFORMED[kind]
        consistent(folder_pack, bad, **kwargs)
    else:
        data = folder_pack.read_bytes()
        # a download cut in the end-of-archive blocks, or bytes appended after them
        bad.write_bytes(data[:-700] if kind == "tail cut off" else data + b"not a tar header" * 64)
        expected = "end" if kind == "tail cut off" else "after"
    home = Path(os.environ["HOME"])
    before = tree_state(home)
    for args in (["--cache"], ["--to-store", str(home / "store"), "--overlay", str(home / "o.yaml")]):
        assert cli(["unpack", str(bad), *args]) == 2
        out, err = capsys.readouterr()
        assert expected in err and "nothing was written" in err and err.count("\n") == 1 and not out, err
        assert tree_state(home) == before


@pytest.mark.parametrize("overlay", ["not yaml", "a list", "a folder"])
def test_an_unusable_overlay_is_refused_before_anything_is_installed(folder_pack, overlay, capsys):
    """--overlay naming a file that is no registry file: one line, and no checkpoint file half-installed."""
    home = Path(os.environ["HOME"])
    path = home / "site.yaml"
    if overlay == "a folder":
        path.mkdir()
    else:
        path.write_text("a: [b\n" if overlay == "not yaml" else "- 1\n")
    before = tree_state(home)
    for args in (["--cache"], ["--to-store", str(home / "store")]):
        assert cli(["unpack", str(folder_pack), *args, "--overlay", str(path)]) == 2
        out, err = capsys.readouterr()
        assert str(path) in err and err.count("\n") == 1 and "Traceback" not in err, err
        assert tree_state(home) == before
