"""The network a run trains: ``random:<timm arch>``, a registry id, or a local checkpoint, with the task's head.

Model creation goes through :func:`medhub.build.create_model` (random init) or :func:`medhub.load`
(pretrained weights); segmentation puts that backbone into segmentation_models_pytorch's U-Net or UperNet
(:mod:`medhub.train.segnet`).

``stem="cifar"`` gives a ``random:`` ResNet the CIFAR-style stem of MedMNIST v2's 28 px experiments (3x3
stride-1 first conv, no max-pool): 4x less downsampling than timm's 7x7 stride-2 conv plus max-pool. A run's
``best.safetensors`` of such a network loads back with the same ``stem="cifar"`` (and ``arch``).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import torch
from torch import nn

from medhub.errors import UsageError
from medhub.schema import RANDOM_PREFIX

log = logging.getLogger(__name__)

STEMS = ("cifar",)


def is_random(model: str) -> bool:
    """True for ``random:<arch>`` (from-scratch baselines)."""
    return model.startswith(RANDOM_PREFIX)


def build_network(model: str, *, num_outputs: int, in_chans: int | None, arch: str | None = None,
                  segmentation: bool = False, linear_probe: bool = False, stem: str | None = None,
                  decoder: str | None = None, img_size: int | None = None) -> nn.Module:
    """Create the network for one run.

    Args:
        model: ``random:<timm arch>``, a registry id or alias, a checkpoint folder, or a file (with ``arch``).
        num_outputs: classifier outputs (ignored for segmentation: one mask channel).
        in_chans: input channels; None keeps the checkpoint's.
        arch: timm architecture of a bare checkpoint file.
        segmentation: build a segmentation network (smp U-Net or UperNet) on the backbone instead of a classifier.
        linear_probe: freeze everything except the classifier.
        stem: ``"cifar"``: a ResNet with a 3x3 stride-1 first conv and no max-pool, for ``random:`` ResNets
            or a checkpoint saved from one (``best.safetensors`` with ``arch``, or a model folder).
        decoder: ``unet`` or ``upernet`` (segmentation); default: the released choice for the backbone's
            family (:func:`medhub.train.segnet.default_decoder`).
        img_size: input side in pixels; classifiers with a fixed token grid (ViT, DeiT, Swin...) are built
            at it with timm's ``img_size`` (see :func:`size_kwargs`).

    Raises:
        UsageError: a ``stem`` the model cannot take, or a CIFAR-stem checkpoint loaded without ``stem``.
    """
    classes = 0 if segmentation else num_outputs
    if stem and segmentation:
        raise UsageError("--cifar-stem applies to classification tasks only; drop it for segmentation")
    check_stem(model, arch=arch, stem=stem)
    if segmentation:
        if linear_probe:
            raise UsageError("--linear-probe applies to classification tasks only")
        return _segmentation_network(model, in_chans=in_chans, arch=arch, decoder=decoder)
    if is_random(model):
        name = model[len(RANDOM_PREFIX):]
        if not name:
            raise UsageError("random: needs a timm architecture, e.g. random:resnet18")
        network = _random_network(name, classes, in_chans, stem, size_kwargs(name, img_size))
    elif stem:
        network = _load_cifar_checkpoint(model, arch, classes, in_chans)
    else:
        import medhub

        extra = size_kwargs(model_arch(model, arch), img_size)
        network = medhub.load(model, num_classes=classes, in_chans=in_chans, arch=arch, **extra)
    if linear_probe:
        freeze_backbone(network)
    return network


def _segmentation_network(model: str, *, in_chans: int | None, arch: str | None, decoder: str | None) -> nn.Module:
    """The backbone built and loaded as everywhere else (no head), then placed in smp's U-Net or UperNet."""
    from medhub.train.segnet import (
        architecture_family,
        build_segmentation_network,
        default_decoder,
        segmentation_spec,
    )

    name = model_arch(model, arch)
    if name is None:
        raise UsageError(f"cannot tell the architecture of {model}; pass --arch <timm architecture>")
    spec = segmentation_spec(name, decoder or default_decoder(architecture_family(name)))
    if is_random(model):
        from medhub.build import create_model

        backbone, _ = create_model(name, None, num_classes=0, in_chans=in_chans, **spec.encoder_kwargs)
    else:
        import medhub

        backbone = medhub.load(model, num_classes=0, in_chans=in_chans, arch=arch)
    return build_segmentation_network(backbone, spec)


def _random_network(name: str, classes: int, in_chans: int | None, stem: str | None,
                    extra: dict | None = None) -> nn.Module:
    from medhub.build import create_model

    prepare = (lambda network: use_cifar_stem(network, model=RANDOM_PREFIX + name)) if stem == "cifar" else None
    network, _ = create_model(name, None, num_classes=classes, in_chans=in_chans, prepare=prepare, **(extra or {}))
    return network


# Input sides tried, on the meta device, to tell the user which sizes an architecture takes: MedMNIST's 28,
# 64, 128 and 224 (MedMNIST+), the benchmark's 224, and common others.
SIZE_PROBES = (28, 32, 56, 64, 96, 112, 128, 224, 256, 384, 512)


def model_arch(model: str, arch: str | None = None) -> str | None:
    """The timm architecture behind ``model`` without loading weights; an unknown registry id raises.

    ``random:<arch>`` -> arch (checked against timm); else ``arch`` when given; a model folder -> its
    config.json's; a file or ``hf-hub:`` name -> None (known only once read); anything else is a registry id
    or alias.

    Raises:
        UnknownModelError: ``model`` is no path, no ``random:``/``hf-hub:`` name and no registry id.
        UsageError: ``random:`` without an architecture, or one timm does not have.
    """
    if is_random(model):
        name = model[len(RANDOM_PREFIX):]
        if not name:
            raise UsageError("random: needs a timm architecture, e.g. random:resnet18")
        from medhub.build import architecture_spec

        architecture_spec(name)  # an unknown architecture is refused here, naming similar ones
        return name
    if arch:
        return arch
    path = Path(model).expanduser()
    if path.is_dir():
        try:
            return json.loads((path / "config.json").read_text()).get("architecture")
        except (OSError, ValueError):
            return None
    if path.exists() or model.startswith("hf-hub:"):
        return None
    from medhub.registry import load_registry

    return load_registry().get_model(model).arch


@functools.lru_cache(maxsize=64)
def takes_img_size(arch: str) -> bool:
    """True when ``arch``'s timm class has an ``img_size`` argument (a fixed token grid: ViT, DeiT, Swin...)."""
    import inspect

    import timm

    with torch.device("meta"):
        network = timm.create_model(arch, pretrained=False, num_classes=0)
    return "img_size" in inspect.signature(type(network).__init__).parameters


def size_kwargs(arch: str | None, img_size: int | None) -> dict:
    """``{"img_size": img_size}`` for architectures built for one input size (ViT, DeiT, Swin), else ``{}``.

    timm then sizes the patch grid, position embeddings and Swin's windows and relative-position tables for
    ``img_size``; :func:`medhub.load` resamples a checkpoint's tables to them.
    """
    if not arch or not img_size or not takes_img_size(arch):
        return {}
    return {"img_size": img_size}


def _runs_at(arch: str, size: int, in_chans: int) -> str | None:
    """None when ``arch`` (built for ``size`` where it takes one) maps a batch at ``size`` px; else why not.

    Runs on the meta device: shapes only, no memory, no arithmetic.
    """
    import timm

    try:
        with torch.device("meta"):
            network = timm.create_model(arch, pretrained=False, num_classes=2, in_chans=in_chans,
                                        **size_kwargs(arch, size))
            network.eval()(torch.empty(2, in_chans, size, size))
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        return str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    return None


def check_input_size(model: str, img_size: int, *, arch: str | None = None, in_chans: int = 3) -> str | None:
    """Refuse, before anything is written, a model that cannot run at ``img_size``; else say how it is built.

    Returns:
        A note for the plan (``"built for 28 px with timm img_size=28 ..."``), or None when nothing changes.

    Raises:
        UsageError: naming the sizes (of :data:`SIZE_PROBES`) the architecture takes.
        UnknownModelError: an unknown registry id (see :func:`model_arch`).
    """
    name = model_arch(model, arch)
    if not name:
        return None
    from medhub.build import architecture_spec

    architecture_spec(name)  # an architecture timm does not have is refused here, naming similar ones
    why = _runs_at(name, img_size, in_chans)
    if why is not None:
        sizes = [size for size in SIZE_PROBES if _runs_at(name, size, in_chans) is None]
        taken = ", ".join(map(str, sizes)) if sizes else f"none of {', '.join(map(str, SIZE_PROBES))}"
        raise UsageError(f"{name} cannot run on {img_size} px inputs ({why}); it takes {taken} px: pass --img-size "
                         "with one of them (the images are resized; MedMNIST's '224' setting upsamples its 28 px "
                         "images)", arch=name, img_size=img_size, sizes=sizes)
    if size_kwargs(name, img_size):
        return (f"input: {name} is built for {img_size} px with timm's img_size={img_size} (patch grid and position "
                "embeddings / relative-position tables sized for it, resampled from a checkpoint's), not upsampled")
    return None


def use_cifar_stem(network: nn.Module, *, model: str = "this model") -> nn.Module:
    """Swap a timm ResNet's stem, in place, for MedMNIST's CIFAR-style one; ``pretrained_cfg["stem"]`` says so.

    ``conv1`` becomes a 3x3 stride-1 padding-1 conv without bias (kaiming normal, fan_out, as timm's ResNet
    initialises convs) and ``maxpool`` an Identity. The first conv keeps its name, so ``first_conv`` holds.
    """
    conv = getattr(network, "conv1", None)
    if not (isinstance(conv, nn.Conv2d) and hasattr(network, "bn1") and hasattr(network, "maxpool")):
        raise UsageError(_not_resnet(model))
    new = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    new.to(device=conv.weight.device, dtype=conv.weight.dtype)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    network.conv1 = new
    network.maxpool = nn.Identity()
    cfg = dict(getattr(network, "pretrained_cfg", None) or {})
    cfg["stem"] = "cifar"
    network.pretrained_cfg = network.default_cfg = cfg
    return network


def check_stem(model: str, *, arch: str | None = None, stem: str | None = None) -> None:
    """Refuse, before any data is read, a ``stem`` that ``model`` cannot take, or a CIFAR-stem checkpoint without it.

    ``stem="cifar"`` fits a ``random:`` timm ResNet with a single-conv stem, or a local ``.safetensors`` file
    (with ``arch``) or model folder saved from one; a pretrained stem would be discarded, so others are refused.
    """
    if stem is None:
        if not is_random(model) and _saved_stem(model, arch) == "cifar":
            raise UsageError(f"{model} holds a CIFAR-stem ResNet (3x3 first conv, no max-pool); load it with "
                             "--cifar-stem (reproduce(..., cifar_stem=True))")
        return
    if stem not in STEMS:
        raise UsageError(f"unknown stem '{stem}'; use stem='cifar' or leave it out")
    if is_random(model):
        from medhub.build import architecture_spec

        name = model[len(RANDOM_PREFIX):]
        shapes = architecture_spec(name).shapes if name else {}
        if name and not ({"conv1.weight", "bn1.weight"} <= set(shapes) and any(k.startswith("layer4.") for k in shapes)):
            raise UsageError(_not_resnet(model))
        return
    path = Path(model).expanduser()
    if not (path.is_dir() or (path.is_file() and path.suffix == ".safetensors")):
        raise UsageError(f"--cifar-stem applies to random:<resnet> (or a .safetensors/model folder saved from one); "
                         f"it would discard the pretrained stem of '{model}': use random:<arch> or drop --cifar-stem")
    if path.is_file() and not arch:
        raise UsageError(f"{model} is a bare checkpoint: pass --arch <timm architecture> (e.g. --arch resnet18)")
    if _saved_stem(model, arch) != "cifar":
        raise UsageError(f"{model} has no CIFAR-style stem (3x3 conv1); its pretrained stem would be discarded: "
                         "drop --cifar-stem")


def _not_resnet(model: str) -> str:
    return (f"--cifar-stem needs a timm ResNet with a single-conv stem (conv1, bn1, maxpool), which {model} is "
            "not; use e.g. random:resnet18 or random:resnet50, or drop --cifar-stem")


def _local_state(model: str, arch: str | None) -> tuple[dict[str, torch.Tensor], str, dict]:
    """``(state_dict, arch, pretrained_cfg)`` of a local ``.safetensors`` file or model folder."""
    from medhub.export import read_model_folder

    path = Path(model).expanduser()
    if path.is_dir():
        state, config = read_model_folder(path)
        return state, arch or config.get("architecture") or "", dict(config.get("pretrained_cfg") or {})
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), arch or "", {}
    raise UsageError(f"{model}: --cifar-stem loads a .safetensors file or a model folder")


def _saved_stem(model: str, arch: str | None) -> str | None:
    """``"cifar"`` when a local safetensors file or model folder holds a CIFAR-stem ResNet (header reads only)."""
    path = Path(model).expanduser()
    try:
        if path.is_dir() and (path / "config.json").is_file():
            config = json.loads((path / "config.json").read_text())
            return (config.get("pretrained_cfg") or {}).get("stem")
        if path.is_file() and path.suffix == ".safetensors" and arch:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:
                keys = handle.keys()
                if "conv1.weight" not in keys:
                    return None
                kernel = tuple(handle.get_slice("conv1.weight").get_shape()[2:])
            return "cifar" if kernel == (3, 3) and _timm_kernel(arch) == (7, 7) else None
    except (OSError, ValueError):  # unreadable here: medhub.load reports it properly
        return None
    return None


def _timm_kernel(arch: str) -> tuple[int, ...] | None:
    from medhub.build import architecture_spec

    shape = architecture_spec(arch).shapes.get("conv1.weight")
    return tuple(shape[2:]) if shape else None


def _load_cifar_checkpoint(model: str, arch: str | None, classes: int, in_chans: int | None) -> nn.Module:
    """A CIFAR-stem ResNet rebuilt and loaded under :func:`medhub.build.create_model`'s strict contract."""
    from medhub.build import create_model

    state, name, cfg = _local_state(model, arch)
    conv = state.get("conv1.weight")
    if not name or conv is None or tuple(conv.shape[2:]) != (3, 3):
        raise UsageError(f"{model} is not a CIFAR-stem ResNet with a known architecture; pass --arch, or drop "
                         "--cifar-stem")
    keep = {k: v for k, v in cfg.items() if k not in ("num_classes", "input_size", "architecture")}
    network, report = create_model(name, state, num_classes=classes, in_chans=in_chans, pretrained_cfg=keep,
                                   prepare=lambda built: use_cifar_stem(built, model=model))
    log.info("loaded %s as a CIFAR-stem %s; classifier %s", model, name, report.classifier)
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


def init_from_scratch(network: nn.Module, kind: str) -> None:
    """Initialise a from-scratch network the way the released code's framework does, in place.

    ``torchvision``: timm's ResNet init (kaiming normal fan_out convs, BN 1/0) without the zero-initialised
    last BN of each block (torchvision's ``zero_init_residual=False``, the default the released code uses).
    ``pytorch_default``: every Conv/Linear/BatchNorm's own ``reset_parameters()`` (MedMNIST/experiments'
    ``models.py`` has no init code). Draws from torch's global generator (seeded by the run).
    """
    if kind == "torchvision":
        for module in network.modules():
            if hasattr(module, "zero_init_last"):
                last = getattr(module, "bn3", None) or getattr(module, "bn2", None)
                if isinstance(last, nn.BatchNorm2d):
                    nn.init.ones_(last.weight)
    elif kind == "pytorch_default":
        for module in network.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                module.reset_parameters()
    else:
        raise UsageError(f"unknown from-scratch init '{kind}'; use torchvision or pytorch_default")


def _registry_head_classes(model: str) -> int | None:
    from medhub.errors import MedhubError
    from medhub.registry import load_registry

    try:
        return load_registry().get_model(model).head.num_classes
    except MedhubError:
        return None


def init_classifier(network: nn.Module, head_init: dict, *, model: str = "", num_outputs: int = 0) -> str:
    """(Re-)initialise the classifier as ``head_init`` says; returns what was done (for the report).

    ``{"kind": "normal", "std": s, "bias": b}``: weight ~ N(0, s), bias b (BenchmarkTransferLearning
    Version2/models.py:55-60, 201-208: std 0.01, bias 0). ``trunc_normal``: timm/Swin's truncated normal.
    ``pytorch_default``: ``nn.Linear.reset_parameters()``. ``kept``: a pretrained head whose class count fits
    stays (registry ids: the entry's head size; local files: kept as loaded); otherwise ``head_init['fallback']``.
    A network without a Linear classifier is left as it is.
    """
    classifier = network.get_classifier() if hasattr(network, "get_classifier") else None
    if isinstance(classifier, nn.Sequential):
        classifier = next((m for m in classifier if isinstance(m, nn.Linear)), None)
    if not isinstance(classifier, nn.Linear):
        return "no linear classifier"
    kind = head_init.get("kind")
    if kind == "kept":
        source = _registry_head_classes(model) if not is_random(model) else None
        if source is None and not is_random(model) and not Path(model).expanduser().exists():
            source = 0
        if is_random(model) or (source is not None and source != num_outputs):
            return init_classifier(network, head_init.get("fallback") or {}, model=model, num_outputs=num_outputs)
        return "kept (pretrained)"
    with torch.no_grad():
        if kind == "normal":
            classifier.weight.normal_(0.0, float(head_init["std"]))
        elif kind == "trunc_normal":
            nn.init.trunc_normal_(classifier.weight, std=float(head_init["std"]))
        elif kind == "pytorch_default":
            classifier.reset_parameters()
            return "pytorch default"
        else:
            return "network default"
        if classifier.bias is not None:
            classifier.bias.fill_(float(head_init.get("bias", 0.0)))
    return f"{kind} std {head_init['std']}, bias {head_init.get('bias', 0.0)}"
