"""Segmentation as the benchmark papers ran it: smp networks, batch Dice loss, pooled Dice, schedules, augmentation,
SCR split. Expected values come from the released code (BenchmarkTransferLearning @ 5656fec) or the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from medhub.build import create_model
from medhub.data.seg_augment import SegmentationAugment, describe, released_pipeline
from medhub.data.segmentation import scr_fold, scr_split
from medhub.errors import DataError, UsageError
from medhub.registry import load_registry
from medhub.train import metrics
from medhub.train.loop import FitConfig, make_scheduler, warmup_cosine
from medhub.train.losses import soft_dice_batch
from medhub.train.segnet import _source_key, build_segmentation_network, segmentation_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _count(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def _network(arch: str, decoder: str):
    spec = segmentation_spec(arch, decoder)
    backbone, _ = create_model(arch, None, num_classes=0, **spec.encoder_kwargs)
    return backbone, build_segmentation_network(backbone, spec)


@pytest.mark.slow
def test_unet_resnet50_is_smps_unet_with_the_released_decoder():
    backbone, network = _network("resnet50", "unet")
    reference = smp.Unet("tu-resnet50", encoder_weights=None, decoder_channels=(256, 128, 64, 32, 16),
                         decoder_interpolation="nearest", classes=1)
    assert _count(network) == _count(reference) == 32_521_105
    # smp's own torchvision-style ResNet-50 U-Net, the construction of the released code (smp.Unet('resnet50'))
    assert _count(smp.Unet("resnet50", encoder_weights=None)) == 32_521_105
    assert [block.conv2[0].out_channels for block in network.decoder.blocks] == [256, 128, 64, 32, 16]
    assert all(block.interpolation_mode == "nearest" for block in network.decoder.blocks)
    assert network.segmentation_head[0].kernel_size == (3, 3)
    with torch.no_grad():
        assert network.eval()(torch.zeros(2, 3, 224, 224)).shape == (2, 1, 224, 224)
    # the encoder holds the backbone's (strictly loaded) tensors, not smp's own random init
    assert torch.equal(network.encoder.model.layer4[2].conv3.weight, backbone.layer4[2].conv3.weight)
    assert network.medhub_segmentation["encoder_tensors_loaded"] == len(network.encoder.model.state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("arch, width, drop_path", [("convnext_tiny", 96, 0.4),
                                                    ("swin_tiny_patch4_window7_224", 192, 0.1)])
def test_upernet_matches_smps_upernet_with_released_width_and_drop_path(arch, width, drop_path):
    backbone, network = _network(arch, "upernet")
    reference = smp.UPerNet(f"tu-{arch}", encoder_weights=None, decoder_channels=width, classes=1)
    assert _count(network) == _count(reference)
    assert network.decoder.fusion_block[0].out_channels == width
    rates = [m.drop_prob for m in network.encoder.modules() if type(m).__name__ == "DropPath"]
    assert max(rates) == pytest.approx(drop_path)
    with torch.no_grad():
        assert network.eval()(torch.zeros(1, 3, 224, 224)).shape == (1, 1, 224, 224)
    source = backbone.state_dict()
    for key, tensor in network.encoder.model.state_dict().items():  # every encoder tensor is the backbone's
        assert torch.equal(tensor, source[_source_key(key, source)]), key
    if arch.startswith("convnext"):  # layer-scale 1.0 (Version2/convnext.py:247) for a random init
        assert torch.all(backbone.stages[0].blocks[0].gamma == 1.0)


def test_a_backbone_that_does_not_fit_the_encoder_is_refused():
    backbone, _ = create_model("resnet18", None, num_classes=0)
    with pytest.raises(UsageError, match="does not fit smp's encoder"):
        build_segmentation_network(backbone, segmentation_spec("resnet34", "unet"))
    with pytest.raises(UsageError, match="unknown segmentation decoder"):
        segmentation_spec("resnet18", "fpn")


def test_dice_pooled_and_per_image_on_hand_made_masks():
    pred = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]], dtype=float)
    truth = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 1], [1, 0]]])
    # pooled: 2 * 1 / (2 predicted + 3 true) ; per image: 2/3, empty/empty = 1, missed = 0
    assert metrics.dice_pooled(pred, truth) == pytest.approx(2 / 5)
    assert metrics.dice_per_image(pred, truth).tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert metrics.dice(pred, truth) == pytest.approx((2 / 3 + 1) / 3)
    empty = np.zeros((2, 4, 4))
    assert metrics.dice_pooled(empty, empty) == 1.0 and metrics.dice(empty, empty) == 1.0
    # threshold > 0.5 (BTL utils.py:138): 0.5 itself is background
    assert metrics.dice_pooled(np.full((1, 2), 0.5), np.ones((1, 2))) == 0.0
    accumulator = metrics.DiceAccumulator()
    for i in range(3):
        accumulator.update(pred[i:i + 1], truth[i:i + 1])
    assert accumulator.pooled == pytest.approx(2 / 5)
    assert accumulator.per_image.tolist() == pytest.approx([2 / 3, 1.0, 0.0])


def test_soft_dice_is_one_dice_over_the_whole_batch():
    probs = torch.tensor([[0.8, 0.2], [0.3, 0.1]]).view(2, 1, 1, 2)
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(2, 1, 1, 2)
    loss = soft_dice_batch(torch.logit(probs), target)
    # BTL utils.py:114-118: 1 - (2 * 0.8 + 1) / (1 + 1.4 + 1)
    assert float(loss) == pytest.approx(1 - 2.6 / 3.4, abs=1e-6)
    per_image = 1 - ((1.6 + 1) / (1 + 1.0 + 1) + (0 + 1) / (0 + 0.4 + 1)) / 2
    assert per_image == pytest.approx(0.2095, abs=1e-4) and abs(float(loss) - per_image) > 0.02


def _lrs(scheduler_name: str, epochs: int, lr: float, warmup: int = 0) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=lr)
    config = FitConfig("segmentation", (), lr=lr, epochs=epochs, scheduler=scheduler_name, warmup_epochs=warmup)
    scheduler = make_scheduler(optimizer, config)
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    return seen


def test_warmup_cosine_is_the_released_learning_rate_schedule():
    def released(step, epochs, lr):  # Version2/utils.py:126-131, set before each epoch (engine.py:180-182)
        progress = min(1.0, max(0.0, (step - 20) / float(epochs - 20)))
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress)) * min(1.0, step / 20)

    seen = _lrs("warmup_cosine", 500, 2e-4, warmup=20)
    assert seen == pytest.approx([released(e, 500, 2e-4) for e in range(500)], abs=1e-12)
    assert seen[0] == 0.0 and seen[10] == pytest.approx(1e-4) and seen[20] == pytest.approx(2e-4)
    assert warmup_cosine(260, 500, 20) == pytest.approx(0.5)


def test_cosine_is_the_released_per_epoch_schedule():
    def released(t, epochs, lr):  # Version1/utils.py:127-135, applied after epoch t (engine.py:214-216)
        return lr / 2 * (math.cos(math.pi * (t % epochs) / epochs) + 1)

    seen = _lrs("cosine", 200, 1e-3)
    assert seen[0] == pytest.approx(1e-3)
    assert seen[1:] == pytest.approx([released(t, 200, 1e-3) for t in range(199)], abs=1e-12)


def test_augmentation_parameters_read_from_the_constructed_pipeline():
    steps = describe(released_pipeline(224))
    color, distort, crop = steps
    assert color["name"] == "OneOf" and color["p"] == 0.3
    assert [s["name"] for s in color["one_of"]] == ["RandomBrightnessContrast", "RandomGamma"]
    assert color["one_of"][0]["brightness_limit"] == color["one_of"][0]["contrast_limit"] == (-0.2, 0.2)
    assert color["one_of"][1]["gamma_limit"] == (80, 120)
    assert distort["p"] == 0.3
    elastic, grid, optical = distort["one_of"]
    assert (elastic["name"], elastic["alpha"], elastic["sigma"]) == ("ElasticTransform", 120, 6)
    assert grid["name"] == "GridDistortion" and grid["num_steps"] == 5 and grid["distort_limit"] == (-0.3, 0.3)
    assert optical["name"] == "OpticalDistortion" and optical["distort_limit"] == (-2, 2)
    assert len({s["p"] for s in distort["one_of"]}) == 1  # OneOf picks uniformly, as 0.x's default p did
    assert crop["name"] == "RandomSizedCrop" and crop["p"] == 0.25
    assert crop["min_max_height"] == (156, 224) and crop["size"] == (224, 224) and crop["w2h_ratio"] == 1.0


def test_augmentation_keeps_masks_binary_and_is_a_function_of_the_batch_seed():
    augment = SegmentationAugment(64)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 1, 64, 64), dtype=torch.uint8, generator=generator)
    masks = torch.zeros(6, 64, 64, dtype=torch.uint8)
    masks[:, 16:48, 16:48] = 1
    first = augment.augment_batch(images, masks, seed=11)
    again = augment.augment_batch(images, masks, seed=11)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert first[0].shape == images.shape and first[1].shape == masks.shape
    assert set(first[1].unique().tolist()) <= {0, 1}
    changed = [not torch.equal(first[0], augment.augment_batch(images, masks, seed=s)[0]) for s in range(12, 16)]
    assert any(changed)


def test_scr_official_fold_split_counts():
    names = [f"JPCLN{i:03d}.png" for i in range(1, 155)] + [f"JPCNN{i:03d}.png" for i in range(1, 94)]
    parts = scr_split(names)
    assert len(parts["train"]) == 124 and len(parts["val"]) + len(parts["test"]) == 123
    assert all(scr_fold(names[i]) == 1 for i in parts["train"])
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(247))
    registry = {s.name: s.size for s in load_registry().get_task("scr_clavicle").splits}
    assert registry == {"train": len(parts["train"]), "val": len(parts["val"]), "test": len(parts["test"])}
    with pytest.raises(DataError, match="not a JSRT image name"):
        scr_fold("heart_01.png")


def test_registry_recipes_per_architecture_family_and_unknown_splits():
    registry = load_registry()
    siim = registry.get_task("siim_pneumothorax")
    assert (siim.protocol.optimizer, siim.protocol.lr, siim.protocol.batch_size, siim.protocol.max_epochs) == \
        ("adam", 0.001, 32, 200)
    assert siim.protocol.loss == "soft_dice_batch" and siim.protocol.normalization == "none"
    v2 = siim.family_protocols["convnext"]
    assert (v2.optimizer, v2.weight_decay, v2.warmup_epochs, v2.max_epochs, v2.early_stopping_patience) == \
        ("adamw", 0.01, 20, 500, 50)
    assert v2.precision == "fp16" and v2.augment_val and v2.image_resize == "nearest"
    drive = registry.get_task("drive_vessels").protocol
    assert drive.loss == "bce" and drive.normalization == "imagenet" and drive.img_size == 512
    for task in ("montgomery_lung", "siim_pneumothorax", "usbreast"):
        assert registry.get_task(task).split_unknown
    assert registry.get_task("scr_heart").split_unknown is None


def test_opencv_resizes_as_the_released_loaders():
    from PIL import Image

    from medhub.data.images import resize_cv2

    image = np.arange(36, dtype=np.uint8).reshape(6, 6)
    # INTER_NEAREST takes source pixel floor(x * 3): rows/columns 0 and 3; PIL's NEAREST samples centres (1, 4)
    assert resize_cv2("nearest", image, 2).tolist() == [[0, 3], [18, 21]]
    assert np.asarray(Image.fromarray(image).resize((2, 2), Image.Resampling.NEAREST)).tolist() == [[7, 10], [25, 28]]
    mask = np.zeros((4, 4), np.uint8)
    mask[:, 1:] = 1  # linear: 0/255 resized, thresholded at 127 (DRIVE loader, Version1/dataloader.py:356-358)
    assert resize_cv2("linear", mask, 2, mask=True).tolist() == [[1, 1], [1, 1]]
    with pytest.raises(ValueError, match="unknown OpenCV resize mode"):
        resize_cv2("cubic", image, 2)


def test_plans_of_segmentation_tasks_per_architecture_family():
    from medhub.train.protocol import make_plan

    registry = load_registry()
    resnet = make_plan(registry.get_task("siim_pneumothorax"), model="resnet50_imagenet1k").as_dict()
    assert (resnet["recipe"], resnet["decoder"], resnet["metric"]) == ("benchmark_segmentation", "unet", "dice_pooled")
    assert (resnet["optimizer"], resnet["lr"], resnet["scheduler"], resnet["epochs"], resnet["patience"]) == \
        ("adam", 0.001, "cosine", 200, 20)
    assert resnet["augment"][2]["name"] == "RandomSizedCrop" and resnet["augment"][2]["applied_to"] == ["train", "val"]
    assert resnet["split"]["unknown"] and not resnet["comparable"]
    convnext = make_plan(registry.get_task("siim_pneumothorax"), model="convnext_base_imagenet1k").as_dict()
    assert (convnext["recipe"], convnext["decoder"], convnext["warmup_epochs"], convnext["precision"]) == \
        ("benchmark_segmentation_v2", "upernet", 20, "fp16")
    assert any("pyramid pooling bins" in d for d in convnext["known_differences"])
    heart = make_plan(registry.get_task("scr_heart"), model="resnet50_imagenet1k").as_dict()
    assert (heart["recipe"], heart["decoder"]) == ("benchmark_segmentation_v2", "unet")  # Version2/models.py:288
    assert "unknown" not in heart["split"] and heart["split"]["train"]["size"] == 124


def test_verdict_says_split_unknown_instead_of_comparing():
    from medhub.train.verdict import SPLIT_UNKNOWN, verdict

    plan = {"metric": "dice_pooled", "published": {"mean": 0.6793, "std": 0.0145}, "deviations": [],
            "split": {"unknown": "no split files are shipped"}}
    outcome = verdict(plan, 0.6800, 0.0, 3)
    assert outcome["verdict"] == SPLIT_UNKNOWN and outcome["tolerance"] is None
    assert outcome["difference"] == pytest.approx(0.0007)
    assert "no split files are shipped" in outcome["verdict_reasons"][0]
    assert verdict({**plan, "split": {}}, 0.6800, 0.0, 3)["verdict"] == "reproduced"
