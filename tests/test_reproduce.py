"""reproduce end to end: report shape and comparison, CLI errors, segmentation, and adapt -> load by new id."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import medhub
from medhub.cli import main
from medhub.registry import load_registry
from medhub.reproduce import reproduce

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_report_shape_and_comparison(tmp_path, shared_data):
    out = tmp_path / "out"
    report = reproduce("random:resnet18", "breastmnist", data_dir=shared_data / "breastmnist", epochs=1,
                       batch_size=64, label_fraction=0.3, out=out, progress=False)
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("model", "task", "metric", "runs", "mean", "std", "reported", "difference", "protocol", "environment"):
        assert key in on_disk, key
    run = on_disk["runs"][0]
    assert {"seed", "metric", "per_class", "epochs", "seconds"} <= set(run)
    assert run["epochs"] == 1 and 0.0 <= run["metric"] <= 1.0 and set(run["per_class"]) == {"normal+benign"}
    # a 1-epoch run is a shortened schedule: the published 28 px number is shown for context, never compared
    assert on_disk["reported"] is None and on_disk["difference"] is None
    assert on_disk["protocol"]["reference"] is None  # no published number at a 0.3 label fraction either
    assert on_disk["verdict"] == "not comparable"
    reasons = " ".join(on_disk["verdict_reasons"])
    assert "shortened schedule" in reasons and "label_fraction: 0.3" in reasons
    overrides = on_disk["protocol"]["overrides"]
    assert overrides["epochs"] == {"value": 1, "protocol": 100}
    assert overrides["batch_size"] == {"value": 64, "protocol": 128}
    assert on_disk["environment"]["torch"] == torch.__version__
    assert (out / "run0" / "best.safetensors").is_file()
    for plot in ("learning_curves.png", "roc_run0.png"):
        assert Image.open(out / plot).size[0] > 300
    text = (out / "report.md").read_text()
    assert "no published number in the registry for this setting" in text and "not a medical device" in text
    assert report["mean"] == on_disk["mean"]


def test_cli_broken_data_folder_is_one_line(tmp_path, capsys):
    broken = tmp_path / "data"
    broken.mkdir()
    (broken / "breastmnist.txt").write_text("not the file")
    code = main(["reproduce", "random:test_resnet", "breastmnist", "--data-dir", str(broken), "--out",
                 str(tmp_path / "out"), "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "no breastmnist.npz (found breastmnist.txt)" in err


def test_cli_rejects_bad_overrides(capsys):
    assert main(["reproduce", "random:test_resnet", "breastmnist", "--label-fraction", "0"]) == 2
    assert "argument --label-fraction: must be > 0 and <= 1, got 0" in capsys.readouterr().err


def test_segmentation_unet_on_montgomery_layout(tmp_path, shared_data):
    """Montgomery layout built from real chest X-rays; masks are a bright-region threshold (a stand-in)."""
    root = tmp_path / "montgomery"
    for sub in ("CXR_png", "ManualMask/leftMask", "ManualMask/rightMask"):
        (root / sub).mkdir(parents=True)
    pngs = sorted((shared_data / "nih_cxr14_1000_64px" / "NIH1000" / "train" / "0_normal").glob("*.png"))[:20]
    for i, png in enumerate(pngs):
        name = f"MCUCXR_{i:04d}_0.png"
        shutil.copy(png, root / "CXR_png" / name)
        gray = np.asarray(Image.open(png).convert("L"))
        left, right = np.zeros_like(gray), np.zeros_like(gray)
        left[:, :32], right[:, 32:] = (gray[:, :32] > 128) * 255, (gray[:, 32:] > 128) * 255
        Image.fromarray(left).save(root / "ManualMask" / "leftMask" / name)
        Image.fromarray(right).save(root / "ManualMask" / "rightMask" / name)
    report = reproduce("random:test_resnet", "montgomery_lung", data_dir=root, epochs=1, img_size=32,
                       batch_size=8, out=tmp_path / "out", progress=False)
    assert report["metric"] == "dice_pooled" and 0.0 <= report["mean"] <= 1.0
    assert report["protocol"]["recipe"] == "benchmark_segmentation"
    run = report["runs"][0]
    assert run["metric"] == run["per_class"]["dice_pooled"] and 0.0 <= run["per_class"]["dice_per_image"] <= 1.0


@pytest.mark.slow
def test_segmentation_upernet_on_a_synthetic_scr_task(tmp_path, shared_data):
    """JSRT/SCR layout from real chest X-rays with a stand-in mask (the bright pixels of a central ellipse):
    ConvNeXt -> the 2025 recipe with smp's UperNet, the SCR fold split, the albumentations pipeline."""
    root = tmp_path / "jsrt"
    (root / "images").mkdir(parents=True)
    (root / "masks" / "heart").mkdir(parents=True)
    pngs = sorted((shared_data / "nih_cxr14_1000_64px" / "NIH1000" / "train" / "0_normal").glob("*.png"))[:16]
    yy, xx = np.mgrid[:64, :64]
    ellipse = ((xx - 34) / 14.0) ** 2 + ((yy - 40) / 11.0) ** 2 <= 1
    for i, png in enumerate(pngs):
        name = f"JPCLN{i + 1:03d}"
        gray = np.asarray(Image.open(png).convert("L"))
        shutil.copy(png, root / "images" / f"{name}.png")
        mask = (ellipse & (gray > np.median(gray[ellipse]))).astype(np.uint8) * 255
        Image.fromarray(mask).save(root / "masks" / "heart" / f"{name}.gif")
    report = reproduce("random:convnext_atto", "scr_heart", data_dir=root, epochs=2, img_size=32, batch_size=4,
                       out=tmp_path / "out", progress=False)
    plan = report["protocol"]
    assert (plan["recipe"], plan["family"], plan["decoder"]) == ("benchmark_segmentation_v2", "convnext", "upernet")
    assert plan["augment_pipeline"] == "btl_segmentation" and plan["augment_val"] and plan["image_resize"] == "nearest"
    assert any("SCR fold 1 (8 images)" in note for note in plan["data_notes"])
    run = report["runs"][0]
    # warm-up (Version2/utils.py:126-131): epoch 0 trains at lr 0, epoch 1 at lr/20
    assert run["epochs"] == 2 and [h["lr"] for h in run["history"]] == pytest.approx([0.0, 2e-4 / 20])
    assert 0.0 <= run["per_class"]["dice_pooled"] <= 1.0 and report["mean"] == run["per_class"]["dice_pooled"]
    # the report ends in the verdict: a 2-epoch run at 32 px is not the published setting
    assert report["verdict"] == "not comparable" and any("epochs" in r for r in report["verdict_reasons"])


def test_adapt_then_load_by_new_id(tmp_path, shared_data):
    from medhub.adapt import adapt

    result = adapt("random:test_resnet", "breastmnist", data_dir=shared_data / "breastmnist", out=tmp_path / "ckpt",
                   new_id="test_resnet_breastmnist", epochs=1, progress=False)
    assert result["id"] == "test_resnet_breastmnist"
    for name in ("model.safetensors", "config.json", "README.md"):
        assert (tmp_path / "ckpt" / name).is_file()
    entry = load_registry().get_model("test_resnet_breastmnist")
    assert [s.dataset for s in entry.lineage] == ["breastmnist"]
    assert entry.sources[0].kind == "local" and entry.head.num_classes == 0
    # the trainer fed 28 px images normalized with MedMNIST's mean 0.5, std 0.5 (train_and_eval_pytorch.py:53-60),
    # gray replicated to the 3 input channels, no crop
    assert entry.preprocessing.input_size == (3, 28, 28) and entry.preprocessing.crop_pct == 1.0
    assert entry.preprocessing.mean == (0.5, 0.5, 0.5) and entry.preprocessing.std == (0.5, 0.5, 0.5)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())["pretrained_cfg"]
    assert config["input_size"] == [3, 28, 28] and config["mean"] == [0.5] * 3 and config["std"] == [0.5] * 3
    model = medhub.load("test_resnet_breastmnist", num_classes=2, in_chans=1)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 2)
    assert model.pretrained_cfg["mean"] == (0.5,) and model.pretrained_cfg["std"] == (0.5,)
    assert main(["adapt", "random:test_resnet", "breastmnist", "--out", str(tmp_path / "again"),
                 "--id", "test_resnet_breastmnist", "--epochs", "1"]) == 2  # the id is taken
    # a second stage on top of the registered id: lineage grows, weights load by the newest id
    second = adapt("test_resnet_breastmnist", "pneumoniamnist", data_dir=None, out=tmp_path / "ckpt2", epochs=1,
                   batch_size=256, progress=False)
    assert second["id"] == "test_resnet_breastmnist_pneumoniamnist"
    chain = [s.dataset for s in load_registry().get_model(second["id"]).lineage]
    assert chain == ["breastmnist", "pneumoniamnist"]
    assert medhub.load(second["id"], num_classes=0)(torch.zeros(1, 3, 28, 28)).ndim == 2


def _nih_layout(tmp_path, shared_data):
    """Every 8th image of the NIH 1000-image subset in the ChestX-ray14 release layout (No Finding / Effusion)."""
    root = tmp_path / "cxr14"
    (root / "images").mkdir(parents=True)
    rows, train_val, test = ["Image Index,Finding Labels"], [], []
    for png in sorted((shared_data / "nih_cxr14_1000_64px" / "NIH1000").glob("*/*/*.png"))[::8]:
        (root / "images" / png.name).symlink_to(png)
        rows.append(f"{png.name},{'No Finding' if png.parent.name.startswith('0') else 'Effusion'}")
        (test if png.parts[-3] == "test" else train_val).append(png.name)
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return root


def test_benchmark_recipe_on_nih_layout(tmp_path, shared_data):
    """ChestX-ray14 protocol (resize-crop augmentation, centre crop, ten-crop test) on real NIH images."""
    root = _nih_layout(tmp_path, shared_data)
    report = reproduce("random:test_resnet", "chestxray14", data_dir=root, epochs=1, img_size=32, batch_size=16,
                       out=tmp_path / "out", progress=False)
    protocol = report["protocol"]
    assert protocol["cache_size"] == 37 and protocol["ten_crop"] == 32 and protocol["center_crop"] == 32
    assert any("resized" in a.lower() for a in protocol["train_augment"])
    defined = {k: v for k, v in report["runs"][0]["per_class"].items() if v == v}  # labels present in test
    assert set(defined) == {next(label for label in defined if "ffusion" in label)}


def test_adapt_records_the_preprocessing_it_trained_with(tmp_path, shared_data):
    """An adapt run at --img-size 32 on NIH images: the new checkpoint's input contract is the run's, not 224 px."""
    from medhub.adapt import adapt

    result = adapt("random:test_resnet", "chestxray14", data_dir=_nih_layout(tmp_path, shared_data),
                   out=tmp_path / "ckpt", new_id="test_resnet_cxr32", epochs=1, img_size=32, batch_size=16,
                   progress=False)
    # the benchmark recipe: ImageNet mean/std (Version2/dataloader.py:25-26), crop 32 out of the 37 px cache
    expected = {"input_size": [3, 32, 32], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                "crop_pct": pytest.approx(32 / 37)}
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())["pretrained_cfg"]
    assert {key: config[key] for key in expected} == expected
    entry = load_registry().get_model(result["id"]).preprocessing.model_dump(mode="json")
    assert {key: entry[key] for key in expected} == expected
    assert list(medhub.transforms(result["id"]).transforms[-1].mean) == expected["mean"]


def test_resume_refuses_changed_options(tmp_path):
    from medhub.errors import UsageError

    reproduce("random:test_resnet", "breastmnist", epochs=1, label_fraction=0.2, out=tmp_path / "o", progress=False)
    again = reproduce("random:test_resnet", "breastmnist", epochs=1, label_fraction=0.2, out=tmp_path / "o",
                      resume=True, progress=False)  # finished runs are kept, not redone
    assert again["runs"][0]["resumed_after_epoch"] is None and again["runs"][0]["epochs"] == 1
    with pytest.raises(UsageError, match=r"started with other options \(epochs: 1 -> 2"):
        reproduce("random:test_resnet", "breastmnist", epochs=2, label_fraction=0.2, out=tmp_path / "o",
                  resume=True, progress=False)
    with pytest.raises(UsageError, match="already holds runs; pass --resume"):
        reproduce("random:test_resnet", "breastmnist", epochs=1, out=tmp_path / "o", progress=False)


def test_adapt_into_its_own_overlay_leaves_the_users_registry_alone(tmp_path, shared_data, monkeypatch):
    """What examples/adapt_then_finetune.py does: the new id lives in the run's own overlay file."""
    from medhub.adapt import adapt
    from medhub.registry import clear_cache, user_overlay_dir

    overlay = tmp_path / "run" / "registry.yaml"
    result = adapt("random:test_resnet", "breastmnist", data_dir=shared_data / "breastmnist", out=tmp_path / "ckpt",
                   new_id="own_overlay_test", epochs=1, progress=False, overlay=overlay)
    assert result["overlay"] == str(overlay) and overlay.is_file()
    assert not user_overlay_dir().exists() or not list(user_overlay_dir().iterdir())
    clear_cache()
    with pytest.raises(KeyError):
        load_registry().get_model("own_overlay_test")  # not in the user's registry...
    monkeypatch.setenv("MEDHUB_REGISTRY", str(overlay))
    clear_cache()
    assert load_registry().get_model("own_overlay_test").lineage[-1].dataset == "breastmnist"  # ...only in its own
