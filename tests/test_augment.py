"""Batched geometric augmentation: same geometry as torchvision's per-image transforms, seeded, masks aligned."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from medhub.data.augment import GeometricAugment
from medhub.data.loader import train_transform


@pytest.fixture(scope="module")
def xrays(shared_data) -> torch.Tensor:
    """Eight real 64 px chest X-rays as a uint8 (8, 1, 64, 64) batch."""
    files = sorted((shared_data / "nih_cxr14_1000_64px" / "NIH1000").glob("train/*/*.png"))[:8]
    arrays = [np.asarray(Image.open(f).convert("L")) for f in files]
    return torch.from_numpy(np.stack(arrays)).unsqueeze(1)


def test_crop_matches_torchvision_resized_crop(xrays):
    augment = GeometricAugment(96, crop_scale=(0.08, 1.0))
    windows = augment.crop_windows(len(xrays), 64, 64, torch.Generator().manual_seed(3))
    out, _ = augment(xrays, generator=torch.Generator().manual_seed(3))
    assert out.shape == (8, 1, 96, 96) and out.dtype == torch.uint8
    for i in range(len(xrays)):
        left, top, width, height = (int(v[i]) for v in windows)
        assert left >= 0 and left + width <= 64 and top >= 0 and top + height <= 64
        expected = TF.resized_crop(xrays[i], top, left, height, width, [96, 96],
                                   interpolation=InterpolationMode.BILINEAR, antialias=False)
        diff = (expected.float() - out[i].float()).abs()
        # same window and interpolation, rounding apart; on the outermost pixels torchvision (crop first)
        # repeats the window's edge where the batched resample reads the real neighbouring pixels
        assert diff[:, 2:-2, 2:-2].max() <= 1 and diff.mean() < 0.5


def test_rotation_matches_torchvision_rotate_sign_and_angle(xrays):
    augment = GeometricAugment(64, crop_scale=None, degrees=15)
    out, _ = augment(xrays, generator=torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)  # the angle is the only draw without crop and flips
    angles = ((torch.rand(len(xrays), generator=replay, dtype=torch.float64) * 2 - 1) * 15).tolist()
    assert all(abs(a) <= 15 for a in angles) and len({round(a, 3) for a in angles}) == len(angles)
    for i, angle in enumerate(angles):
        expected = TF.rotate(xrays[i], angle, interpolation=InterpolationMode.BILINEAR)
        mirrored = TF.rotate(xrays[i], -angle, interpolation=InterpolationMode.BILINEAR)
        inner = (slice(None), slice(12, 52), slice(12, 52))
        assert (expected.float() - out[i].float()).abs()[inner].max() <= 1
        if abs(angle) > 2:
            assert (mirrored.float() - out[i].float()).abs()[inner].mean() > 2


def test_flips_are_exact_and_about_half(xrays):
    augment = GeometricAugment(64, crop_scale=None, hflip=True)
    out, _ = augment(xrays.repeat(8, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, xrays[i % 8].flip(-1)) for i, o in enumerate(out)]
    same = [torch.equal(o, xrays[i % 8]) for i, o in enumerate(out)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 16 <= sum(flipped) <= 48  # 64 draws at p=0.5


def test_crop_parameters_follow_the_requested_ranges():
    augment = GeometricAugment(224, crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3))
    left, top, width, height = augment.crop_windows(4000, 256, 256, torch.Generator().manual_seed(1))
    area = (width * height / 256**2).numpy()
    ratio = (width / height).numpy()
    assert area.min() >= 0.07 and area.max() <= 1.0
    assert ratio.min() >= 0.74 and ratio.max() <= 1.35
    assert 0.45 < np.median(area) < 0.6  # uniform area scale, minus windows that do not fit
    assert (left >= 0).all() and (left + width <= 256).all() and (top + height <= 256).all()


def test_fallback_window_when_no_try_fits():
    augment = GeometricAugment(32, crop_scale=(2.0, 3.0))  # areas larger than the image never fit
    left, top, width, height = augment.crop_windows(4, 40, 100, torch.Generator().manual_seed(0))
    assert width.tolist() == [53.0] * 4 and height.tolist() == [40.0] * 4  # 40 * 4/3, centred
    assert left.tolist() == [23.0] * 4 and top.tolist() == [0.0] * 4


def test_same_seed_same_batch_other_seed_other_batch(xrays):
    augment = GeometricAugment(48, hflip=True, degrees=7)
    first, _ = augment(xrays, generator=torch.Generator().manual_seed(11))
    again, _ = augment(xrays, generator=torch.Generator().manual_seed(11))
    other, _ = augment(xrays, generator=torch.Generator().manual_seed(12))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_masks_move_with_their_images():
    masks = torch.zeros(6, 64, 64, dtype=torch.uint8)
    masks[:, 20:44, 10:30] = 1
    images = (masks * 200).unsqueeze(1)
    augment = GeometricAugment(64, crop_scale=(0.49, 1.0), crop_p=1.0, hflip=True, degrees=7)
    out, warped = augment(images, masks, generator=torch.Generator().manual_seed(2))
    assert warped.shape == masks.shape and warped.dtype == torch.uint8
    assert set(warped.unique().tolist()) <= {0, 1}
    agree = ((out[:, 0] > 100) == (warped == 1)).float().mean()
    assert agree > 0.97  # bilinear image edge vs nearest mask edge


def test_crop_probability_leaves_the_rest_whole(xrays):
    augment = GeometricAugment(64, crop_scale=(0.49, 1.0), crop_p=0.25)
    _, _, width, height = augment.crop_windows(400, 64, 64, torch.Generator().manual_seed(4))
    whole = ((width == 64) & (height == 64)).float().mean().item()
    assert 0.65 < whole < 0.85


def test_protocol_names_choose_the_batched_path_only_when_all_steps_are_geometric():
    batched = train_transform(("RandomResizedCrop(224)", "RandomHorizontalFlip", "RandomRotation(7)"), 224)
    assert batched == GeometricAugment(224, crop_scale=(0.08, 1.0), hflip=True, degrees=7.0)
    segmentation = train_transform(("RandomSizedCrop(156-224 -> 224) p=0.25",), 224, segmentation=True)
    assert segmentation.crop_scale == (0.49, 1.0) and math.isclose(segmentation.crop_p, 0.25)
    mixed = train_transform(("RandomBrightnessContrast", "RandomHorizontalFlip"), 224)
    assert not isinstance(mixed, GeometricAugment) and len(mixed.transforms) == 2
    per_image = train_transform(("RandomResizedCrop(224)",), 224, batched=False)
    assert not isinstance(per_image, GeometricAugment)
    assert train_transform((), 224) is None
