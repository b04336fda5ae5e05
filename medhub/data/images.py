"""Decode one image file (DICOM, PNG, JPEG, TIFF, GIF, JSRT raw) into uint8 grey levels or RGB.

Every decoder returns ``(H, W)`` uint8 for one channel or ``(H, W, 3)`` uint8 for three, by one rule per
dataset (:class:`medhub.schema.PixelRule`, the task's ``layout.pixels``), never by each image's own
min..max:

* DICOM grey (MONOCHROME1/2), the standard's pipeline (PS3.3 C.11 and C.7.6.3.1.2), with pydicom's
  functions: stored values -> modality LUT (Rescale Slope/Intercept or Modality LUT Sequence) -> VOI:
  the rule's window if it names one, else the file's VOI LUT Sequence, else the file's first Window
  Center/Width with its VOI LUT Function (LINEAR, LINEAR_EXACT, SIGMOID) -> MONOCHROME1 inverted. A
  window maps its bounds onto 0..255; a VOI LUT maps 0..2**n-1 (n: its LUT Descriptor's bits) onto
  0..255; with neither, the range Bits Stored allows (signed or not, through the modality LUT) maps
  onto 0..255 (``no_window="bit_depth"``).
* DICOM colour: RGB as stored, YBR_FULL/YBR_FULL_422/YBR_ICT/YBR_RCT converted to RGB by pydicom,
  PALETTE COLOR through its palette tables; 0..2**BitsStored-1 (palette: 0..2**LUT bits-1) onto 0..255.
* Multi-frame DICOM and multi-page TIFF/GIF: refused unless the rule names a ``frame``.
* Compressed DICOM decodes through pydicom's plugins: pylibjpeg with pylibjpeg-libjpeg (JPEG baseline,
  extended 12-bit, lossless, JPEG-LS), pylibjpeg-openjpeg (JPEG 2000), pylibjpeg-rle (RLE); deflate
  needs nothing. A file no installed plugin decodes raises a one-line error naming its transfer syntax
  and the package that reads it.
* PNG/JPEG/TIFF: EXIF Orientation applied first (as every viewer does); 16-bit grey maps 0..2**bits-1
  onto 0..255 (``bits`` from the rule, else the PNG's sBIT chunk, else 16); palette images through their
  palette; alpha composited onto black; RGB files with equal channels reduced to one channel.
* 8-bit grey or RGB PNGs with no transparency, palette, EXIF, ICC profile or compressed text chunk decode
  through OpenCV (faster, the same samples); every other image file through Pillow, and so does a PNG Pillow
  would turn (an orientation in "Raw profile type exif" text) or refuse (a bad CRC before IDAT, more than
  ``Image.MAX_IMAGE_PIXELS``).
* ``channels=1`` of a colour image is its ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B, as DICOM's
  YBR_FULL Y), ``channels=3`` of a grey image repeats it.
"""

from __future__ import annotations

import functools
import json
import logging
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from medhub.errors import DataError
from medhub.schema import PixelRule

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
RAW_SUFFIXES = {".img"}  # JSRT: 2048x2048 big-endian 12-bit, no header
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp", ".ppm", ".pgm"}
SUPPORTED_SUFFIXES = DICOM_SUFFIXES | RAW_SUFFIXES | IMAGE_SUFFIXES

DEFAULT_RULE = PixelRule()


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` holds a DICOM Part 10 file: the bytes ``DICM`` after its 128-byte preamble (PS3.10 7.1).

    For files exported without ``.dcm`` (``IM000001``, or named by their SOP Instance UID ``1.2.840...``).
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def unnamed_dicoms(root: Path) -> list[Path]:
    """Files under ``root`` without an image suffix (none, or a number as in a UID name) that are DICOM, sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and (p.suffix == "" or p.suffix[1:].isdigit()) and is_dicom_file(p))
# The parts of the rule no task changes; recorded with the rule (a change here changes cache keys).
FIXED_RULES = (
    "DICOM grey: modality LUT -> VOI (rule window, else file VOI LUT Sequence, else file's first window "
    "with its VOI LUT Function) -> 0..255 by the window bounds or LUT bits -> MONOCHROME1 inverted",
    "DICOM colour: YBR_* to RGB (pydicom), PALETTE COLOR via its palette, 0..2**bits-1 onto 0..255",
    "PNG/JPEG/TIFF: EXIF Orientation first; 16-bit 0..2**bits-1 onto 0..255; alpha over black",
    "channels=1 of colour: BT.601 luma 0.299 R + 0.587 G + 0.114 B",
)
BT601_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601; DICOM PS3.3 C.7.6.3.1.2 (YBR_FULL's Y)


def pixel_record(rule: PixelRule | None) -> dict[str, Any]:
    """The rule as recorded in cache manifests and reports: its settings and the fixed parts."""
    return {"rule": (rule or DEFAULT_RULE).model_dump(mode="json"), "fixed": list(FIXED_RULES)}


def describe_rule(rule: PixelRule | None) -> str:
    """One line for a report's data notes, e.g. ``pixels: DICOM window: the file's VOI ...``."""
    rule = rule or DEFAULT_RULE
    if rule.window is not None:
        voi = f"window {rule.window[0]:g}/{rule.window[1]:g} {rule.voi_function} (replaces the file's)"
    else:
        voi = "the file's VOI LUT or first window (its VOI LUT Function)"
    parts = [f"DICOM VOI: {voi}; without one: {rule.no_window} (Bits Stored range through the modality LUT "
             "onto 0..255)",
             f"multi-frame: {'frame ' + str(rule.frame) if rule.frame is not None else 'refused'}",
             f"16-bit PNG/TIFF: 0..2**{rule.bits if rule.bits else 'sBIT or 16'}-1 onto 0..255",
             "EXIF orientation applied; alpha over black; MONOCHROME1 inverted"]
    return "pixels: " + "; ".join(parts)


def rule_key(rule: PixelRule | None) -> str:
    """A stable text of :func:`pixel_record` for cache keys."""
    return json.dumps(pixel_record(rule), sort_keys=True)


def set_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """``array`` with exactly ``channels`` (1 or 3): BT.601 luma of colour for 1, grey repeated for 3.

    Luma is rounded half to even, in float64: ``round(0.299 R + 0.587 G + 0.114 B)``.
    """
    if channels == 1:
        if array.ndim == 2:
            return array
        gray = array[..., :3].astype(np.float64) @ np.array(BT601_LUMA)
        return np.clip(np.round(gray), 0, 255).astype(np.uint8)
    if channels == 3:
        if array.ndim == 3:
            return array[..., :3]
        return np.repeat(array[..., None], 3, axis=2)
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def range_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low..high`` linearly onto 0..255 (rounded, clipped): a fixed range, not the image's own."""
    scaled = (np.asarray(values, dtype=np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def window_to_uint8(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """A VOI window onto 0..255 by the standard's function (DICOM PS3.3 C.11.2.1.2 LINEAR, C.11.2.1.3.1
    SIGMOID, C.11.2.1.3.2 LINEAR_EXACT), computed by pydicom's ``apply_windowing`` with an 8-bit output.

    ``values`` are after the modality LUT (Hounsfield units for CT); returns uint8 of the same shape.
    Raises ValueError for a width the function does not allow or an unknown function.
    """
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_windowing
    from pydicom.valuerep import DSfloat

    voi = Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"
    voi.BitsStored, voi.PixelRepresentation = 8, 0  # pydicom's output range: 0..255
    voi.WindowCenter = DSfloat(center, auto_format=True)
    voi.WindowWidth = DSfloat(width, auto_format=True)
    voi.VOILUTFunction = str(function).strip().upper() or "LINEAR"
    out = apply_windowing(np.asarray(values, dtype=np.float64), voi)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# pip packages that let pydicom decode each compressed transfer syntax (pydicom's decoder plugins)
_LIBJPEG = "pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pylibjpeg pylibjpeg-openjpeg"
DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": _LIBJPEG, "1.2.840.10008.1.2.4.51": _LIBJPEG,
    "1.2.840.10008.1.2.4.57": _LIBJPEG, "1.2.840.10008.1.2.4.70": _LIBJPEG,
    "1.2.840.10008.1.2.4.80": _LIBJPEG, "1.2.840.10008.1.2.4.81": _LIBJPEG,
    "1.2.840.10008.1.2.4.90": _OPENJPEG, "1.2.840.10008.1.2.4.91": _OPENJPEG,
    "1.2.840.10008.1.2.4.201": _OPENJPEG, "1.2.840.10008.1.2.4.202": _OPENJPEG,
    "1.2.840.10008.1.2.4.203": _OPENJPEG, "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}


def _undecodable(path: Path, ds, exc: Exception) -> DataError:
    """A one-line error naming the transfer syntax, what failed and the package that decodes it."""
    from pydicom.pixels import get_decoder

    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    syntax = f"{uid.name} ({uid})" if uid else "an unknown transfer syntax (no (0002,0010) in the file meta)"
    reason = " ".join(str(exc).split())[:200]
    if uid is None or not uid.is_compressed:
        return DataError(f"{path}: cannot read the {syntax} pixel data ({reason}); the file is incomplete "
                         "or damaged, export it again from its source", path=path)
    try:
        plugins = sorted(get_decoder(uid).available_plugins)
    except NotImplementedError:
        return DataError(f"{path}: pydicom has no decoder for {syntax}; convert the file to an uncompressed "
                         "transfer syntax (e.g. 'gdcmconv --raw' or dcmtk's 'dcmdjpeg')", path=path)
    packages = DECODER_PACKAGES.get(str(uid), "python-gdcm")
    if not plugins:
        return DataError(f"{path}: no installed decoder reads {syntax} (medhub's dependencies include it); "
                         f"pip install {packages}", path=path)
    other = "python-gdcm" if "gdcm" not in plugins else None
    if "pylibjpeg" not in plugins and str(uid) in DECODER_PACKAGES:  # medhub's own decoder is missing
        hint = f"install the decoder medhub depends on: pip install {packages}" + (f" (or {other})" if other else "")
    elif other:
        hint = f"another decoder may read it: pip install {other}"
    else:
        hint = "the pixel data may be damaged"
    return DataError(f"{path}: the installed decoder(s) {', '.join(plugins)} could not decode its {syntax} "
                     f"pixel data ({reason}); {hint}", path=path)


def _frame_index(count: int, rule: PixelRule, path: Path) -> int | None:
    """Which frame to decode: None for a single-frame file; the rule's frame; else a clear refusal."""
    if count <= 1:
        return None
    if rule.frame is None:
        raise DataError(f"{path}: holds {count} frames and the task names none; set layout.pixels.frame "
                        "(0-based) in the task entry, or export the frame you want as its own file", path=path)
    if rule.frame >= count:
        raise DataError(f"{path}: has {count} frames, no frame {rule.frame} (layout.pixels.frame is 0-based)",
                        path=path)
    return rule.frame


FRAME_GROUPS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")
FRAME_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth",
                  "VOILUTFunction")


def lift_frame_groups(ds, index: int | None) -> None:
    """Put a multi-frame (enhanced) file's rescale and window for frame ``index`` at the top level of ``ds``.

    Enhanced CT/MR/XA keep them in functional groups (PS3.3 C.7.6.16): the Shared Functional Groups, then
    the frame's Per-Frame Functional Groups (which take precedence). Changes ``ds`` in place.
    """
    groups = [*ds.get("SharedFunctionalGroupsSequence", [])[:1]]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if index is not None and index < len(per_frame):
        groups.append(per_frame[index])
    for group in groups:
        for name in FRAME_GROUPS:
            for item in group.get(name, [])[:1]:
                for keyword in FRAME_KEYWORDS:
                    if keyword in item:
                        setattr(ds, keyword, item[keyword].value)


class _QuietDecodeFailures(logging.Filter):
    """Drops pydicom's per-plugin decode failures (``LOGGER.exception``, with tracebacks) while medhub decodes
    in this thread: medhub raises them as one DataError line (:func:`_undecodable`)."""

    def __init__(self) -> None:
        super().__init__()
        self.active = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR or not getattr(self.active, "on", False)


_QUIET_DECODERS = _QuietDecodeFailures()
logging.getLogger("pydicom.pixels.decoders.base").addFilter(_QUIET_DECODERS)


def read_dicom_pixels(path: Path, rule: PixelRule = DEFAULT_RULE):
    """The dataset and the decoded stored values of its frame (``rule.frame``; refused if multi-frame).

    Returns ``(ds, array)``: ``(H, W)`` for one sample per pixel, ``(H, W, 3)`` RGB for colour (YBR
    converted); an enhanced file's functional-group rescale and window for that frame are lifted into
    ``ds`` (:func:`lift_frame_groups`). Raises DataError naming the transfer syntax and the package when
    it cannot be decoded.
    """
    import pydicom
    from pydicom.pixels import pixel_array

    ds = pydicom.dcmread(str(path))
    if "PixelData" not in ds:
        raise DataError(f"{path}: a DICOM file without an image (no Pixel Data; e.g. a report or a "
                        "structure set); list only image files", path=path)
    index = _frame_index(int(ds.get("NumberOfFrames", 1) or 1), rule, path)
    lift_frame_groups(ds, index or 0)
    _QUIET_DECODERS.active.on = True
    try:
        return ds, pixel_array(ds, index=index)
    except DataError:
        raise
    except Exception as exc:  # the plugins raise RuntimeError, ValueError, NotImplementedError ...
        raise _undecodable(path, ds, exc) from exc
    finally:
        _QUIET_DECODERS.active.on = False


def modality_range(ds) -> tuple[float, float]:
    """The range of the modality LUT's output for every value Bits Stored allows (pydicom's rule).

    Modality LUT Sequence: 0..2**n-1 (n: its LUT Descriptor's bits); otherwise the stored range (signed
    when Pixel Representation is 1) times Rescale Slope plus Rescale Intercept.
    """
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    low, high = (0, 2 ** bits - 1) if int(ds.get("PixelRepresentation", 0)) == 0 else \
        (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]


def _first(ds, keyword: str) -> float | None:
    """The first value of a multi-valued numeric element, or None when absent or empty."""
    if keyword not in ds or ds[keyword].value in (None, ""):
        return None
    element = ds[keyword]
    return float(element.value[0] if element.VM > 1 else element.value)


def dicom_grey(ds, stored: np.ndarray, rule: PixelRule = DEFAULT_RULE) -> np.ndarray:
    """Grey levels of MONOCHROME1/2 stored values by the standard's pipeline (see the module docstring).

    ``stored``: the decoded frame ``(H, W)``; returns uint8 ``(H, W)``.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi

    values = apply_modality_lut(stored, ds)
    center, width = _first(ds, "WindowCenter"), _first(ds, "WindowWidth")
    if rule.window is not None:
        grey = window_to_uint8(values, *rule.window, rule.voi_function)
    elif ds.get("VOILUTSequence") and "LUTData" in ds.VOILUTSequence[0]:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        if values.dtype.kind == "f" and np.array_equal(values, np.round(values)):
            values = values.astype(np.int64)  # a LUT is indexed by integers (pydicom warns on floats)
        grey = range_to_uint8(apply_voi(values, ds), 0, 2 ** bits - 1)
    elif center is not None and width is not None:
        grey = window_to_uint8(values, center, width, str(ds.get("VOILUTFunction", "") or "LINEAR"))
    else:
        grey = range_to_uint8(values, *modality_range(ds))
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":
        grey = 255 - grey
    return grey


def dicom_colour(ds, pixels: np.ndarray, path: Path) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` of a PALETTE COLOR, RGB or YBR (already converted by pydicom) frame."""
    from pydicom.pixels import apply_color_lut

    photometric = str(ds.PhotometricInterpretation)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        return range_to_uint8(rgb, 0, 2 ** (8 * rgb.dtype.itemsize) - 1)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise DataError(f"{path}: photometric interpretation {photometric} is not one medhub reads "
                        "(MONOCHROME1/2, RGB, YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT, PALETTE COLOR)", path=path)
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels)
    return range_to_uint8(pixels, 0, 2 ** int(ds.BitsStored) - 1)


def read_dicom(path: Path, rule: PixelRule = DEFAULT_RULE) -> np.ndarray:
    """A DICOM image as uint8: grey ``(H, W)`` (MONOCHROME1/2) or RGB ``(H, W, 3)`` (every colour kind)."""
    ds, pixels = read_dicom_pixels(path, rule)
    if str(ds.PhotometricInterpretation) in ("MONOCHROME1", "MONOCHROME2"):
        return dicom_grey(ds, pixels, rule)
    return dicom_colour(ds, pixels, path)


# CT windows (center, width) in Hounsfield units, one per RGB channel: lung, PE-specific (CTPA), mediastinal
CT_PE_WINDOWS = ((-600.0, 1500.0), (100.0, 700.0), (40.0, 400.0))


def read_ct_windows(path: Path, rule: PixelRule = DEFAULT_RULE,
                    windows: tuple[tuple[float, float], ...] = CT_PE_WINDOWS) -> np.ndarray:
    """A CT slice in Hounsfield units (modality LUT) through each LINEAR window, one uint8 channel each.

    The file's own VOI window is ignored: every slice gets the same fixed windows, so intensities mean
    the same thing across scanners. Returns ``(H, W)`` for one window, ``(H, W, len(windows))`` otherwise.
    """
    from pydicom.pixels import apply_modality_lut

    ds, pixels = read_dicom_pixels(path, rule)
    hu = apply_modality_lut(pixels, ds)
    channels = [window_to_uint8(hu, center, width) for center, width in windows]
    return channels[0] if len(channels) == 1 else np.stack(channels, axis=-1)


DECODERS = {"ct_pe_windows": read_ct_windows}


def read_jsrt_raw(path: Path, rule: PixelRule = DEFAULT_RULE, side: int = 2048) -> np.ndarray:
    """A JSRT ``.IMG`` file: headerless 2048x2048 big-endian 12-bit, high values dark; 0..4095 onto 255..0."""
    raw = np.fromfile(path, dtype=">u2")
    if raw.size != side * side:
        raise DataError(f"{path}: a JSRT .IMG file holds {side}x{side} 16-bit pixels; this one has {raw.size} values")
    return 255 - range_to_uint8(raw.reshape(side, side), 0, 2 ** (rule.bits or 12) - 1)


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def png_significant_bits(path: Path) -> int | None:
    """The PNG sBIT chunk's significant bits of the grey (or red) sample, or None without one (PNG 11.3.3.4)."""
    with open(path, "rb") as handle:
        if handle.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        while header := handle.read(8):
            if len(header) < 8:
                return None
            length, kind = struct.unpack(">I4s", header)
            if kind in (b"IDAT", b"IEND"):
                return None
            data = handle.read(length)
            handle.seek(4, 1)  # CRC
            if kind == b"sBIT" and data:
                return int(data[0])
    return None


def _open_pil(path: Path, min_size: int | None, rule: PixelRule):
    """The Pillow image of the rule's frame, loaded and turned by its EXIF Orientation."""
    from PIL import Image, ImageOps

    image = Image.open(path)
    frames = int(getattr(image, "n_frames", 1) or 1)
    index = _frame_index(frames, rule, path)
    if index:
        image.seek(index)
    if min_size and image.format == "JPEG":
        image.draft(image.mode, (min_size, min_size))
    image.load()
    turned = ImageOps.exif_transpose(image)
    return image if turned is None else turned


def _pil_to_uint8(image, path: Path, rule: PixelRule) -> np.ndarray:
    """Grey ``(H, W)`` or RGB ``(H, W, 3)`` uint8 from a loaded Pillow image (see the module docstring)."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(f"{path}: {mode} image with values outside 0..65535; save it as 8- or 16-bit", path=path)
        bits = rule.bits or png_significant_bits(path) or 16
        return range_to_uint8(values, 0, 2 ** bits - 1)
    if mode == "F":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 1):
            raise DataError(f"{path}: floating-point image outside 0..1; save it as 8- or 16-bit", path=path)
        return range_to_uint8(values, 0.0, 1.0)
    if mode in ("1", "L") and "transparency" not in image.info:
        return np.asarray(image if mode == "L" else image.convert("L"))  # convert() would copy an L image
    if "A" in mode or "a" in mode or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
        rgb = np.round(rgba[..., :3] * rgba[..., 3:] / 255.0).astype(np.uint8)
    else:
        rgb = np.asarray(image.convert("RGB"))
    return grey_if_equal(rgb)


@functools.cache
def opencv():
    """The ``cv2`` module, with OpenCV's own thread pool switched off (once per process): beside torch's OpenMP
    threads it can deadlock a later torch operation, and every caller here runs one image per thread."""
    import cv2

    cv2.setNumThreads(0)
    return cv2


def grey_if_equal(rgb: np.ndarray) -> np.ndarray:
    """``(H, W)`` when the three channels of ``rgb`` (``(H, W, 3)`` uint8) are equal, else ``rgb`` itself."""
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    return rgb


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that change no pixel value Pillow decodes (PNG 11.3: Pillow keeps gAMA, cHRM, sRGB, sBIT of an 8-bit
# image, bKGD, tEXt, pHYs and tIME as metadata only) and that libpng reads without a warning on stderr once
# :func:`_quiet_chunk` has checked their fields. Any other chunk (tRNS, eXIf, acTL, PLTE, and iCCP, zTXt, iTXt,
# hIST, sPLT, whose faults libpng reports on stderr: "iCCP: known incorrect sRGB profile" is common) sends the
# file to Pillow.
PLAIN_PNG_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"bKGD", b"pHYs",
                              b"tIME", b"tEXt"})
# Text keywords Pillow reads an orientation from (``Image.getexif``: ImageMagick's "Raw profile type exif"
# text, XMP's ``tiff:Orientation`` in "XML:com.adobe.xmp"; any keyword with "exif" or "xmp" to be safe): such a
# file is turned by :func:`_open_pil`, so it goes to Pillow.
ORIENTATION_KEYWORDS = (b"exif", b"xmp")


def _orientation_text(kind: bytes, body: bytes) -> bool:
    """Whether a tEXt chunk's keyword (PNG 11.3.3: 1-79 bytes before a NUL) may carry an orientation (zTXt and
    iTXt never reach the fast path)."""
    if kind != b"tEXt":
        return False
    keyword = body[:80].split(b"\0", 1)[0].lower()
    return any(word in keyword for word in ORIENTATION_KEYWORDS)


def _quiet_chunk(kind: bytes, body: bytes, channels: int) -> bool:
    """Whether libpng reads this ancillary chunk of an 8-bit grey (``channels=1``) or RGB (3) PNG without
    printing a warning: the lengths and ranges of PNG 11.3 (gAMA 4 bytes, non-zero; sRGB one rendering intent
    0-3; sBIT one 1-8 per channel; bKGD one 16-bit sample <= 255 per channel; cHRM 32 bytes; pHYs 9; tIME a
    valid date and time). tEXt, and chunks without fields to check, always."""
    if kind == b"gAMA":
        return len(body) == 4 and int.from_bytes(body, "big") > 0
    if kind == b"sRGB":
        return len(body) == 1 and body[0] <= 3
    if kind == b"sBIT":
        return len(body) == channels and all(1 <= bits <= 8 for bits in body)
    if kind == b"bKGD":
        return len(body) == 2 * channels and all(v <= 255 for v in struct.unpack(f">{channels}H", body))
    if kind == b"cHRM":
        return len(body) == 32
    if kind == b"pHYs":
        return len(body) == 9
    if kind == b"tIME":
        if len(body) != 7:
            return False
        _, month, day, hour, minute, second = struct.unpack(">HBBBBB", body)
        return 1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60
    return True


def _pillow_pixel_limit() -> int | None:
    """Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``; None when a caller switched it off)."""
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS


def plain_png(data: bytes) -> bool:
    """Whether ``data`` is a PNG of 8-bit grey (colour type 0) or 8-bit RGB (type 2) samples, one frame, with
    no transparency, palette or EXIF chunk: a file whose decoded samples are its pixels, whatever decoder reads
    it (PNG 11.2.2 IHDR: width, height, bit depth, colour type, ...), and one Pillow opens without complaint.

    Also False (the file goes to Pillow, which turns, warns or refuses it as before) for a text chunk whose
    keyword names EXIF or XMP (Pillow reads an orientation from them), a chunk before the first IDAT with a
    wrong CRC (PNG 5.3; Pillow refuses the file, libpng would skip the chunk), an ancillary chunk libpng
    would warn about on stderr (:func:`_quiet_chunk`; Pillow is silent), and more than Pillow's
    ``Image.MAX_IMAGE_PIXELS`` pixels (its decompression-bomb guard). Reads chunk headers, checks the CRCs of
    the chunks before IDAT; never loops past the end of ``data``.
    """
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 33:
        return False
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    if depth != 8 or colour not in (0, 2):  # IHDR bit depth, colour type
        return False
    limit = _pillow_pixel_limit()
    if limit is not None and width * height > limit:
        return False
    position, seen_idat = 8, False
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        if kind not in PLAIN_PNG_CHUNKS:
            return False
        if kind == b"IEND":
            return True
        end = position + 8 + length
        if kind == b"IDAT":
            seen_idat = True
        else:
            body = data[position + 8:end]
            if _orientation_text(kind, body) or not _quiet_chunk(kind, body, 1 if colour == 0 else 3):
                return False
            if not seen_idat and (end + 4 > len(data)
                                  or zlib.crc32(body, zlib.crc32(kind)) != struct.unpack_from(">I", data, end)[0]):
                return False
        position = end + 4  # length, type, data, CRC
    return False


def read_plain_png(data: bytes) -> np.ndarray | None:
    """Grey ``(H, W)`` or RGB ``(H, W, 3)`` uint8 of a :func:`plain_png` file, decoded by OpenCV's PNG reader
    (``cv2.imdecode``; about 15% less CPU than Pillow's on a 1024x1024 grey radiograph, BENCHMARKS.md), or None
    when OpenCV cannot decode it (the caller then asks Pillow, which explains what is wrong). The samples are
    those Pillow decodes (tests/test_data_png.py checks every PNG kind for equality)."""
    cv2 = opencv()
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint8 or array.ndim not in (2, 3):
        return None
    if array.ndim == 2:
        return array
    if array.shape[2] != 3:
        return None
    return grey_if_equal(np.ascontiguousarray(array[..., ::-1]))  # OpenCV gives BGR


def read_pil(path: Path, min_size: int | None = None, rule: PixelRule = DEFAULT_RULE,
             size: int | None = None) -> np.ndarray:
    """PNG/JPEG/TIFF/GIF/BMP via Pillow, EXIF Orientation applied first (see the module docstring).

    ``min_size`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale (in the DCT, several times faster) while both
    sides stay at least ``min_size``: for callers that resize to that size anyway. ``size``: the caller
    resizes to ``size x size`` with :func:`resize`; an 8-bit grey image is then resized here, before it
    leaves Pillow (the same pixels, without copying the full-size image into NumPy and back). Other modes
    come back at their own size.
    """
    from PIL import Image

    image = _open_pil(path, min_size, rule)
    try:
        if size and image.mode == "L" and "transparency" not in image.info and image.size != (size, size):
            resized = image.resize((size, size), Image.Resampling.BILINEAR)
            image.close()
            image = resized
        return _pil_to_uint8(image, path, rule)
    finally:
        image.close()


def read_png_or_pil(path: Path, min_size: int | None, rule: PixelRule, size: int | None) -> np.ndarray:
    """A :func:`plain_png` file through :func:`read_plain_png`, anything else through :func:`read_pil`."""
    if path.suffix.lower() == ".png":
        data = path.read_bytes()
        if plain_png(data) and (array := read_plain_png(data)) is not None:
            return array
    return read_pil(path, min_size, rule, size)


def read_image(path: str | Path, channels: int = 1, decoder: str | None = None,
               min_size: int | None = None, rule: PixelRule | None = None, size: int | None = None) -> np.ndarray:
    """Decode ``path`` into uint8 ``(H, W)`` (channels=1) or ``(H, W, 3)`` (channels=3); with ``size``,
    resized to ``size x size`` by :func:`resize` (bilinear, antialiased), as the decode-once cache stores it.

    ``decoder`` names a special decoder of :data:`DECODERS` (e.g. ``ct_pe_windows``) to use instead of
    the one the file type selects. ``min_size``: the caller will resize to this size, so a JPEG may be
    decoded smaller, never below it on either side (see :func:`read_pil`). ``rule``: the dataset's
    :class:`~medhub.schema.PixelRule` (default: the file's window, else the bit depth's range).

    Raises:
        DataError: the file is missing, of an unknown type, multi-frame without a frame rule, or cannot
            be decoded (for DICOM: naming the transfer syntax and the package that decodes it).
    """
    path = Path(path)
    rule = rule or DEFAULT_RULE
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path}: image file not found; check the data folder", path=path)
    try:
        if decoder is not None:
            array = DECODERS[decoder](path, rule)
        elif suffix in DICOM_SUFFIXES or (suffix not in SUPPORTED_SUFFIXES and is_dicom_file(path)):
            array = read_dicom(path, rule)
        elif suffix in RAW_SUFFIXES:
            array = read_jsrt_raw(path, rule)
        elif suffix in IMAGE_SUFFIXES:
            array = read_png_or_pil(path, min_size or size, rule, size)
        else:
            raise DataError(
                f"{path}: unsupported image type '{suffix}'; use DICOM, PNG, JPEG or TIFF", path=path
            )
    except DataError:
        raise
    except Exception as exc:  # decoders raise many unrelated types
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise DataError(f"{path}: cannot decode image ({reason}); check that it is a complete "
                        f"{suffix.lstrip('.').upper() or 'image'} file", path=path) from exc
    array = set_channels(array, channels)
    return array if size is None else resize(array, size)


def resize(array: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize a uint8 image (or mask) to ``size x size``: bilinear with antialiasing, or nearest for masks."""
    from PIL import Image

    if array.shape[0] == size and array.shape[1] == size:
        return array
    image = Image.fromarray(array)
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(image.resize((size, size), method))


RESIZE_MODES = ("bilinear", "nearest", "linear")


def resize_cv2(mode: str, array: np.ndarray, size: int, *, mask: bool = False) -> np.ndarray:
    """``size x size`` with OpenCV, as the benchmark's segmentation loaders resize image and mask.

    ``nearest``: ``cv2.INTER_NEAREST`` (source pixel ``floor(x · scale)``; PIL's NEAREST samples pixel centres and
    picks other pixels) for image and mask (BTL ``Version1/dataloader.py:313-314``). ``linear``:
    ``cv2.INTER_LINEAR`` without antialiasing for both; a 0/1 mask is resized as 0/255 and thresholded at 127
    (``cv2.threshold(.., 127, 255, THRESH_BINARY)``, the DRIVE loader ``Version1/dataloader.py:356-358``).

    Raises:
        ValueError: another ``mode``.
    """
    cv2 = opencv()
    if mode not in ("nearest", "linear"):
        raise ValueError(f"unknown OpenCV resize mode {mode!r}; use nearest or linear")
    if array.shape[0] == size and array.shape[1] == size:
        return array
    flag = cv2.INTER_NEAREST if mode == "nearest" else cv2.INTER_LINEAR
    if mask and mode == "linear":
        scaled = cv2.resize(np.ascontiguousarray(array.astype(np.uint8) * 255), (size, size), interpolation=flag)
        return (scaled > 127).astype(np.uint8)
    return cv2.resize(np.ascontiguousarray(array), (size, size), interpolation=flag)


def _mask_part(path: Path, rule: PixelRule) -> np.ndarray:
    """Where one mask file is non-zero, turned by its EXIF Orientation like its image (16-bit kept as is)."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return read_image(path, channels=1, rule=rule) > 0
    if not path.is_file():
        raise DataError(f"{path}: mask file not found; check the data folder", path=path)
    try:
        image = _open_pil(path, None, rule)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot decode this mask ({type(exc).__name__}: {exc})", path=path) from exc
    try:
        values = np.asarray(image) if image.mode in SIXTEEN_BIT_MODES + ("F",) else _pil_to_uint8(image, path, rule)
    finally:
        image.close()
    return (values > 0) if values.ndim == 2 else (values > 0).any(axis=-1)


def read_mask(paths: list[Path] | tuple[Path, ...], rule: PixelRule | None = None) -> np.ndarray:
    """Union of one or more binary mask files (non-zero = inside) as a uint8 ``(H, W)`` array of 0 and 1."""
    mask = None
    for path in paths:
        part = _mask_part(Path(path), rule or DEFAULT_RULE)
        mask = part if mask is None else (mask | part)
    if mask is None:
        raise DataError("a segmentation sample has no mask file")
    return mask.astype(np.uint8)
