"""The network a run trains: ``random:<timm arch>``, a registry id, or a local checkpoint, with the task's head.

Model creation goes through :func:`medhub.build.create_model` (random init) or :func:`medhub.load`
(pretrained weights); segmentation wraps the backbone in :class:`medhub.train.unet.UNet`.
"""

from __future__ import annotations

import logging

from torch import nn

from medhub.errors import UsageError
from medhub.schema import RANDOM_PREFIX

log = logging.getLogger(__name__)


def is_random(model: str) -> bool:
    """True for ``random:<arch>`` (from-scratch baselines)."""
    return model.startswith(RANDOM_PREFIX)


def build_network(model: str, *, num_outputs: int, in_chans: int | None, arch: str | None = None,
                  segmentation: bool = False, linear_probe: bool = False) -> nn.Module:
    """Create the network for one run.

    Args:
        model: ``random:<timm arch>``, a registry id or alias, a checkpoint folder, or a file (with ``arch``).
        num_outputs: classifier outputs (ignored for segmentation: one mask channel).
        in_chans: input channels; None keeps the checkpoint's.
        arch: timm architecture of a bare checkpoint file.
        segmentation: build a U-Net on the backbone instead of a classifier.
        linear_probe: freeze everything except the classifier.
    """
    classes = 0 if segmentation else num_outputs
    if is_random(model):
        from medhub.build import create_model

        name = model[len(RANDOM_PREFIX):]
        if not name:
            raise UsageError("random: needs a timm architecture, e.g. random:resnet18")
        network, _ = create_model(name, None, num_classes=classes, in_chans=in_chans)
    else:
        import medhub

        network = medhub.load(model, num_classes=classes, in_chans=in_chans, arch=arch)
    if segmentation:
        if linear_probe:
            raise UsageError("--linear-probe applies to classification tasks only")
        from medhub.train.unet import UNet

        return UNet(network, out_channels=1)
    if linear_probe:
        freeze_backbone(network)
    return network


def freeze_backbone(network: nn.Module) -> list[str]:
    """Freeze every parameter outside the classifier; returns the names left trainable."""
    classifier = network.get_classifier() if hasattr(network, "get_classifier") else None
    if not isinstance(classifier, nn.Module) or not any(True for _ in classifier.parameters()):
        raise UsageError("this network has no classifier to train alone; drop --linear-probe")
    keep = {id(p) for p in classifier.parameters()}
    trainable = []
    for name, parameter in network.named_parameters():
        parameter.requires_grad = id(parameter) in keep
        if parameter.requires_grad:
            trainable.append(name)
    log.info("linear probe: training %s only", ", ".join(trainable))
    return trainable
