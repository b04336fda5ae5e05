"""Formats that need a foreign runtime to read. medhub refuses them with the exact steps to take."""

from __future__ import annotations

from medhub.errors import ConversionError

BYOL_HAIKU_HELP = (
    "BYOL's pretrain_res50x1.pkl is a Haiku pickle that only jax, jaxlib, dm-haiku and dill can unpickle, "
    "and unpickling runs code, so medhub will not open it. In a separate environment you trust run "
    "`pip install jax jaxlib dm-haiku dill`, load the pickle, and save "
    "experiment_state.online_params and experiment_state.online_state as numpy arrays keyed by their Haiku "
    "module paths (np.savez); or use a ResNet-50 state dict already converted from it, with --format torchvision"
)

SIMCLR_TF_HELP = (
    "SimCLR checkpoints are TensorFlow checkpoints; medhub does not run TensorFlow. Convert v1 with "
    "tonylins/simclr-converter (`pip install tensorflow`, then `python convert.py ResNet50_1x/model.ckpt-225206`) "
    "and v2 with Separius/SimCLRv2-Pytorch (`python convert.py r50_1x_sk0/model.ckpt-250228`); then run "
    "`medhub convert <the .pth> --format torchvision --arch resnet50`. SimCLR expects inputs in [0, 1] "
    "with no mean/std normalisation"
)

REFUSED = {
    "byol_haiku": ("BYOL (DeepMind Haiku pickle): refused, see the message for the steps", BYOL_HAIKU_HELP),
    "simclr_tf": (
        "SimCLR v1/v2 (TensorFlow checkpoint): refused, see the message for the steps",
        SIMCLR_TF_HELP,
    ),
}


def refuse(fmt: str, path: str | None = None) -> None:
    """Raise the :class:`ConversionError` that explains how to convert a foreign-runtime checkpoint."""
    raise ConversionError(REFUSED[fmt][1], fmt=fmt, path=path)
