"""The benchmark's segmentation augmentation, built with albumentations as the released code does.

``build_transform_segmentation`` of BenchmarkTransferLearning @ 5656fec (``Version1/dataloader.py:68-84``; the
2025 code calls the same function, ``Version2/main_segmentation.py:91-92,115-118,125-128``) composes, with
p = 1 overall:

1. OneOf[RandomBrightnessContrast(), RandomGamma()], p = 0.3 (library defaults: brightness and contrast
   +-0.2, gamma 80-120);
2. OneOf[ElasticTransform(alpha=120, sigma=120*0.05, alpha_affine=120*0.03), GridDistortion(),
   OpticalDistortion(distort_limit=2, shift_limit=0.5)], p = 0.3;
3. RandomSizedCrop(min_max_height=(156, 224), height=224, width=224), p = 0.25 (a square crop, w2h_ratio 1);
4. ToFloat(max_value=1) (a dtype change only).

It is applied to the image and its mask together, to the training **and the validation** split
(``Version1/main_segmentation.py:81-82,95-98``). The released code imports albumentations names that were
removed in version 1.0 (``IAAAdditiveGaussianNoise``, ``JpegCompression``: ``Version1/dataloader.py:15-21``), so it
ran a 0.x release; this module builds the same pipeline with albumentations 2.x, setting explicitly the
0.x defaults that 2.x changed (reflect-101 borders, uniform elastic noise, unnormalized grid distortion). :data:`LIBRARY_DIFFERENCES` lists
what 2.x cannot express.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

PIPELINE = "btl_segmentation"
SOURCE = "BenchmarkTransferLearning Version1/dataloader.py:68-84 (build_transform_segmentation) @ 5656fec"

LIBRARY_DIFFERENCES: tuple[str, ...] = (
    "ElasticTransform alpha_affine=3.6 (a random affine warp moving three points by up to 3.6 px before the "
    "elastic field) was removed from albumentations in 1.4 and has no 2.x parameter: left out",
    "OpticalDistortion shift_limit=0.5 was removed in 2.0; in 0.x it shifted the distortion centre by "
    "round(U(-0.5, 0.5)) = 0 whole pixels, so leaving it out changes nothing",
)


def released_pipeline(size: int = 224):
    """The released albumentations ``Compose`` for ``size x size`` inputs (224 in the papers).

    Returns:
        An ``albumentations.Compose`` taking ``image`` (H, W[, C]) uint8 and ``mask`` (H, W) uint8.
    """
    import albumentations as A

    from medhub.data.images import opencv

    cv2 = opencv()
    reflect = cv2.BORDER_REFLECT_101  # albumentations 0.x default border for the three distortions
    low = round(size * 156 / 224)
    return A.Compose([
        A.OneOf([
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.RandomGamma(gamma_limit=(80, 120), p=0.5),
        ], p=0.3),
        A.OneOf([
            A.ElasticTransform(alpha=120, sigma=120 * 0.05, noise_distribution="uniform", border_mode=reflect, p=0.5),
            A.GridDistortion(num_steps=5, distort_limit=0.3, normalized=False, border_mode=reflect, p=0.5),
            A.OpticalDistortion(distort_limit=2, border_mode=reflect, p=0.5),
        ], p=0.3),
        A.RandomSizedCrop(min_max_height=(low, size), size=(size, size), w2h_ratio=1.0, p=0.25),
    ], p=1.0)


def describe(pipeline) -> list[dict[str, Any]]:
    """The steps of a constructed ``Compose`` with their parameters, read back from the object itself."""
    import albumentations as A

    def step(node: dict[str, Any]) -> dict[str, Any]:
        name = node.get("__class_fullname__", "").rsplit(".", 1)[-1]
        out: dict[str, Any] = {"name": name, "p": node.get("p")}
        if "transforms" in node:
            out["one_of"] = [step(child) for child in node["transforms"]]
            return out
        skip = {"__class_fullname__", "p", "transforms", "strict", "keypoint_remapping_method", "fill", "fill_mask"}
        out.update({k: v for k, v in node.items() if k not in skip})
        return out

    return [step(child) for child in A.to_dict(pipeline)["transform"]["transforms"]]


class SegmentationAugment:
    """Applies an albumentations pipeline to each sample of a ``(B, C, H, W)`` uint8 batch and its masks.

    The randomness is a function of the batch seed only (the pipeline is reseeded per batch), so a resumed run
    sees the same augmented batches. Masks stay 0/1 (nearest-neighbour resampling).
    """

    def __init__(self, size: int = 224) -> None:
        self.size = size
        self.pipeline = released_pipeline(size)

    def augment_batch(self, images: torch.Tensor, masks: torch.Tensor | None,
                      seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``images`` (B, C, H, W) uint8 and ``masks`` (B, H, W) -> the same shapes, augmented."""
        self.pipeline.set_random_seed(int(seed) % (2**32))
        out_images, out_masks = [], []
        for i in range(len(images)):
            image = np.ascontiguousarray(images[i].numpy().transpose(1, 2, 0))
            mask = np.ascontiguousarray(masks[i].numpy()) if masks is not None else np.zeros(image.shape[:2],
                                                                                               np.uint8)
            result = self.pipeline(image=image, mask=mask)
            picture = result["image"]
            picture = picture[..., None] if picture.ndim == 2 else picture
            out_images.append(torch.from_numpy(np.ascontiguousarray(picture.transpose(2, 0, 1))))
            out_masks.append(torch.from_numpy(np.ascontiguousarray(result["mask"])))
        return torch.stack(out_images), (torch.stack(out_masks) if masks is not None else None)

    def describe(self) -> list[dict[str, Any]]:
        """The steps and parameters of the constructed pipeline."""
        return describe(self.pipeline)
