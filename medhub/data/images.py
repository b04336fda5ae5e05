"""Decode one image file (DICOM, PNG, JPEG, TIFF, GIF, JSRT raw) into a uint8 array, grayscale made explicit.

Every decoder returns ``(H, W)`` uint8 for one channel or ``(H, W, 3)`` uint8 for three. Medical
conventions are applied here and nowhere else: DICOM rescale slope/intercept and VOI window,
``MONOCHROME1`` inversion, 16-bit PNGs stretched to 8 bits, RGBA and palette images flattened, and
RGB files whose channels are equal (most chest X-ray PNGs) reduced to one channel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medhub.errors import DataError

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
RAW_SUFFIXES = {".img"}  # JSRT: 2048x2048 big-endian 12-bit, no header
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp", ".ppm", ".pgm"}
SUPPORTED_SUFFIXES = DICOM_SUFFIXES | RAW_SUFFIXES | IMAGE_SUFFIXES


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Stretch any numeric array linearly onto 0..255 (min to 0, max to 255); uint8 passes through."""
    if array.dtype == np.uint8:
        return array
    values = array.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def set_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """Return ``array`` with exactly ``channels`` (1 or 3) channels: luminance for 1, replication for 3."""
    if channels == 1:
        if array.ndim == 2:
            return array
        rgb = array[..., :3].astype(np.float32)
        gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(np.round(gray), 0, 255).astype(np.uint8)
    if channels == 3:
        if array.ndim == 3:
            return array[..., :3]
        return np.repeat(array[..., None], 3, axis=2)
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def read_dicom(path: Path) -> np.ndarray:
    """Pixels of a DICOM file as uint8, after the modality LUT, the VOI window and MONOCHROME1 inversion."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(str(path))
    pixels = ds.pixel_array
    if int(getattr(ds, "SamplesPerPixel", 1)) == 3:
        return to_uint8(pixels)
    if pixels.ndim == 3:  # multi-frame: the first frame
        pixels = pixels[0]
    values = apply_modality_lut(pixels, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds)
    gray = to_uint8(np.asarray(values))
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        gray = 255 - gray
    return gray


# CT windows (center, width) in Hounsfield units, one per RGB channel: lung, PE-specific (CTPA), mediastinal
CT_PE_WINDOWS = ((-600.0, 1500.0), (100.0, 700.0), (40.0, 400.0))


def read_ct_windows(path: Path, windows: tuple[tuple[float, float], ...] = CT_PE_WINDOWS) -> np.ndarray:
    """A CT slice in Hounsfield units (rescale slope/intercept) through each window, one uint8 channel each.

    The file's own VOI window is ignored: every slice gets the same fixed windows, so intensities mean
    the same thing across scanners. Returns ``(H, W)`` for one window, ``(H, W, len(windows))`` otherwise.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(str(path))
    pixels = ds.pixel_array
    if pixels.ndim == 3:  # multi-frame: the first frame
        pixels = pixels[0]
    hu = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    channels = [np.round(np.clip((hu - (center - width / 2)) / width, 0.0, 1.0) * 255).astype(np.uint8)
                for center, width in windows]
    return channels[0] if len(channels) == 1 else np.stack(channels, axis=-1)


DECODERS = {"ct_pe_windows": read_ct_windows}


def read_jsrt_raw(path: Path, side: int = 2048) -> np.ndarray:
    """A JSRT ``.IMG`` file: headerless 2048x2048 big-endian 12-bit, stored with high values dark."""
    raw = np.fromfile(path, dtype=">u2")
    if raw.size != side * side:
        raise DataError(f"{path}: a JSRT .IMG file holds {side}x{side} 16-bit pixels; this one has {raw.size} values")
    gray = to_uint8(raw.reshape(side, side).astype(np.float32))
    return 255 - gray


def read_pil(path: Path, min_size: int | None = None) -> np.ndarray:
    """PNG/JPEG/TIFF/GIF via Pillow: 8-bit gray or RGB, 16-bit stretched, alpha and palettes dropped.

    ``min_size`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale (in the DCT, several times faster) while both
    sides stay at least ``min_size``: for callers that resize to that size anyway.
    """
    from PIL import Image

    with Image.open(path) as image:
        if min_size and image.format == "JPEG":
            image.draft(image.mode, (min_size, min_size))
        image.load()
        mode = image.mode
        if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return to_uint8(np.asarray(image))
        if mode in ("1", "L", "LA"):
            return np.asarray(image.convert("L"))
        rgb = np.asarray(image.convert("RGB"))
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    return rgb


def read_image(path: str | Path, channels: int = 1, decoder: str | None = None,
               min_size: int | None = None) -> np.ndarray:
    """Decode ``path`` into uint8 ``(H, W)`` (channels=1) or ``(H, W, 3)`` (channels=3).

    ``decoder`` names a special decoder of :data:`DECODERS` (e.g. ``ct_pe_windows``) to use instead of
    the one the file type selects. ``min_size``: the caller will resize to this size, so a JPEG may be
    decoded smaller, never below it on either side (see :func:`read_pil`).

    Raises:
        DataError: the file is missing, of an unknown type, or cannot be decoded.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path}: image file not found; check the data folder", path=path)
    try:
        if decoder is not None:
            array = DECODERS[decoder](path)
        elif suffix in DICOM_SUFFIXES:
            array = read_dicom(path)
        elif suffix in RAW_SUFFIXES:
            array = read_jsrt_raw(path)
        elif suffix in IMAGE_SUFFIXES:
            array = read_pil(path, min_size)
        else:
            raise DataError(
                f"{path}: unsupported image type '{suffix}'; use DICOM, PNG, JPEG or TIFF", path=path
            )
    except DataError:
        raise
    except Exception as exc:  # decoders raise many unrelated types
        raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc}); replace or remove the file",
                        path=path) from exc
    return set_channels(array, channels)


def resize(array: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize a uint8 image (or mask) to ``size x size``: bilinear with antialiasing, or nearest for masks."""
    from PIL import Image

    if array.shape[0] == size and array.shape[1] == size:
        return array
    image = Image.fromarray(array)
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(image.resize((size, size), method))


def resize_cv2_nearest(array: np.ndarray, size: int) -> np.ndarray:
    """``size x size`` with OpenCV's ``INTER_NEAREST`` (source pixel ``floor(x · scale)``), as the benchmark's
    segmentation loaders resize image and mask (BTL ``Version1/dataloader.py:313-314``; PIL's NEAREST samples
    pixel centres and picks other pixels)."""
    import cv2

    if array.shape[0] == size and array.shape[1] == size:
        return array
    return cv2.resize(np.ascontiguousarray(array), (size, size), interpolation=cv2.INTER_NEAREST)


def read_mask(paths: list[Path] | tuple[Path, ...]) -> np.ndarray:
    """Union of one or more binary mask files as a uint8 array of 0 and 1."""
    mask = None
    for path in paths:
        part = read_image(path, channels=1) > 0
        mask = part if mask is None else (mask | part)
    if mask is None:
        raise DataError("a segmentation sample has no mask file")
    return mask.astype(np.uint8)
