"""Images read as the standards say: DICOM grey pipeline, photometric interpretations, transfer syntaxes,
multi-frame, 16-bit/palette/alpha PNG and TIFF, EXIF orientation, and the pixel rule in the cache manifest.

References are the standard's formulas (DICOM PS3.3 C.11.2.1.2 linear window, C.11.2.1.3 sigmoid and
linear-exact, C.7.6.3.1.2 YBR) and pydicom's own functions (apply_modality_lut, apply_voi_lut,
apply_windowing, convert_color_space, apply_color_lut) on pydicom's test files and real images.
The first three tests are the field cases of ../shared/cases/images/.
"""

from __future__ import annotations

import copy
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageOps
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_voi_lut,
    convert_color_space,
    pixel_array,
)
from pydicom.sequence import Sequence

from medhub.data import load_task_data
from medhub.data.cache import cached_split
from medhub.data.images import read_image, read_mask
from medhub.errors import DataError
from medhub.registry import load_registry
from medhub.schema import PixelRule

ROOT = Path(__file__).resolve().parents[1]


def linear_window(values, center, width):
    """DICOM PS3.3 C.11.2.1.2.1 onto 0..255, written out."""
    y = ((np.asarray(values, float) - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


def pydicom_reference(ds) -> np.ndarray:
    """pydicom's modality LUT + VOI LUT/window, its output range [y_min, y_max] mapped onto 0..255."""
    out = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation)
    y_min, y_max = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    y_min, y_max = y_min * slope + intercept, y_max * slope + intercept
    return np.clip(np.round((out - y_min) / (y_max - y_min) * 255), 0, 255).astype(np.uint8)


def save(ds, folder: Path, name: str) -> Path:
    path = folder / name
    ds.save_as(path)
    return path


def mr_small() -> Dataset:
    return pydicom.dcmread(get_testdata_file("MR_small.dcm"))


# ---- the field cases -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, window", [("MR_small.dcm", None), ("CT_small.dcm", (-600, 1500)),
                                          ("CT_small.dcm", (40, 400))])
def test_case_dicom_window_is_not_restretched(shared_data, tmp_path, name, window):
    """dicom_window_restretch.py: the window's bounds map onto 0..255, whatever range the image covers."""
    ds = pydicom.dcmread(shared_data / "dicom_pydicom" / name)
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    path = save(ds, tmp_path, name)
    got = read_image(path)
    hu = apply_modality_lut(ds.pixel_array, ds)
    want = linear_window(hu, float(ds.WindowCenter), float(ds.WindowWidth))
    assert np.array_equal(got, want)
    assert np.abs(got.astype(int) - pydicom_reference(ds).astype(int)).max() <= 1
    if name == "MR_small.dcm":  # WC 600 / WW 1600 on pixels 127..2145: grey 52..255, not 0..255
        assert (got.min(), got.max()) == (52, 255)


def test_case_jpeg_lossless_jpeg_ls_and_12_bit_jpeg_decode():
    """dicom_jpeg_lossless.py: JPEG-LS lossless = MR_small; JPEG lossless RGB and 12-bit JPEG decode."""
    reference = read_image(get_testdata_file("MR_small.dcm"))
    assert np.array_equal(read_image(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")), reference)
    lossless = read_image(get_testdata_file("SC_rgb_jpeg_gdcm.dcm"), channels=3)
    assert np.array_equal(lossless, read_image(get_testdata_file("SC_rgb_rle.dcm"), channels=3))
    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))  # 12-bit, no window: 0..4095 onto 0..255
    want = np.round(ds.pixel_array.astype(float) * 255 / 4095).astype(np.uint8)
    assert np.array_equal(read_image(get_testdata_file("JPGExtended.dcm")), want)


def test_case_jpeg_exif_orientation(tmp_path):
    """jpeg_exif_orientation.py: Orientation=6 is applied, as every viewer does."""
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:6, :6] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())
    shown = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("L"))
    got = read_image(path)
    assert got.shape == (40, 20) and np.array_equal(got, shown)
    assert tuple(np.argwhere(got > 128).mean(0).round()) == (2, 16)


def test_case_scripts_run_clean():
    """The case scripts themselves, run as a user would: no difference left in their output."""
    cases = ROOT.parent / "shared" / "cases" / "images"
    if not cases.is_dir():
        pytest.skip("../shared/cases/images is not beside this checkout")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(cases / "dicom_window_restretch.py")], capture_output=True,
                         text=True, env=env, check=True).stdout
    assert out.count("max 0 gray levels") == 3, out


# ---- the grey pipeline -----------------------------------------------------------------------------------

@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_voi_lut_function_as_the_file_says(tmp_path, function):
    ds = mr_small()
    ds.VOILUTFunction = function
    got = read_image(save(ds, tmp_path, "mr.dcm"))
    x = ds.pixel_array.astype(float)
    c, w = 600.0, 1600.0
    if function == "LINEAR_EXACT":  # C.11.2.1.3.2
        want = np.clip(np.round(((x - c) / w + 0.5) * 255), 0, 255)
    elif function == "SIGMOID":  # C.11.2.1.3.1
        want = np.round(255 / (1 + np.exp(-4 * (x - c) / w)))
    else:
        want = linear_window(x, c, w)
    assert np.array_equal(got, want.astype(np.uint8))
    assert np.abs(got.astype(int) - pydicom_reference(ds).astype(int)).max() <= 1


def test_first_of_several_windows_and_a_task_window_replaces_the_files(tmp_path):
    ds = mr_small()
    ds.WindowCenter, ds.WindowWidth = [600, 1000], [1600, 400]
    path = save(ds, tmp_path, "two.dcm")
    assert np.array_equal(read_image(path), linear_window(ds.pixel_array, 600, 1600))
    rule = PixelRule(window=(1000, 400))
    assert np.array_equal(read_image(path, rule=rule), linear_window(ds.pixel_array, 1000, 400))
    sigmoid = PixelRule(window=(1000, 400), voi_function="SIGMOID")
    want = np.round(255 / (1 + np.exp(-4 * (ds.pixel_array - 1000.0) / 400)))
    assert np.array_equal(read_image(path, rule=sigmoid), want.astype(np.uint8))


def test_ct_lung_window_in_hounsfield_units(shared_data, tmp_path):
    ds = pydicom.dcmread(shared_data / "dicom_pydicom" / "CT_small.dcm")
    got = read_image(shared_data / "dicom_pydicom" / "CT_small.dcm", rule=PixelRule(window=(-600, 1500)))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(got, linear_window(hu, -600, 1500))


def test_voi_lut_sequence_and_modality_lut_sequence(tmp_path):
    ds = mr_small()
    lut = np.clip(np.arange(4096) * 20, 0, 65535).astype(np.uint16)  # a 16-bit VOI LUT from value 0
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUT Descriptor: entries, first value mapped, bits
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    got = read_image(save(ds, tmp_path, "voilut.dcm"))
    reference = apply_voi(ds.pixel_array, ds)
    assert np.array_equal(got, np.round(reference.astype(float) * 255 / 65535).astype(np.uint8))
    assert np.array_equal(apply_voi_lut(ds.pixel_array, ds), reference)  # the LUT wins over the window

    ds = mr_small()
    del ds.WindowCenter, ds.WindowWidth
    modality = Dataset()
    modality.add_new(0x00283002, "US", [4096, 0, 16])  # 8 or 16 bits (PS3.3 C.11.1.1.1)
    modality.ModalityLUTType = "US"
    modality.add_new(0x00283006, "US", ((4095 - np.arange(4096)) * 16).tolist())
    ds.ModalityLUTSequence = Sequence([modality])
    got = read_image(save(ds, tmp_path, "mlut.dcm"))
    after = apply_modality_lut(ds.pixel_array, ds)
    assert np.array_equal(got, np.round(after.astype(float) * 255 / 65535).astype(np.uint8))


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    ds = mr_small()
    normal = read_image(save(ds, tmp_path, "m2.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert np.array_equal(read_image(save(ds, tmp_path, "m1.dcm")), 255 - normal)


def test_no_window_one_range_for_every_image_of_a_dataset(tmp_path):
    """No VOI: the range Bits Stored allows maps onto 0..255, so a value has one grey in every image."""
    ds = mr_small()  # signed 16-bit: -32768..32767 onto 0..255
    del ds.WindowCenter, ds.WindowWidth
    first = read_image(save(ds, tmp_path, "a.dcm"))
    assert np.array_equal(first, np.round((ds.pixel_array + 32768.0) * 255 / 65535).astype(np.uint8))
    narrow = np.minimum(ds.pixel_array, 1000)  # another image of the set covering less of the range
    ds.PixelData = narrow.astype(np.int16).tobytes()
    second = read_image(save(ds, tmp_path, "b.dcm"))
    kept = narrow < 1000
    assert np.array_equal(second[kept], first[kept])
    assert second.max() < first.max()  # not re-stretched to its own max


# ---- transfer syntaxes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
                                  "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm"])
def test_every_encoding_of_mr_small_gives_the_same_grey(name):
    assert np.array_equal(read_image(get_testdata_file(name)), read_image(get_testdata_file("MR_small.dcm")))


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm",
                                  "JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm", "image_dfl.dcm",
                                  "liver_1frame.dcm", "rtdose_rle_1frame.dcm"])
def test_compressed_grey_files_follow_the_pipeline(name):
    ds = pydicom.dcmread(get_testdata_file(name))
    got = read_image(get_testdata_file(name))
    assert got.shape == ds.pixel_array.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - pydicom_reference(ds).astype(int)).max() <= 1


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm",
                                  "SC_rgb_dcmtk_+eb+cy+s2.dcm", "SC_rgb_jpeg_lossy_gdcm.dcm",
                                  "SC_rgb_gdcm_KY.dcm", "SC_rgb_jls_lossy_line.dcm", "examples_jpeg2k.dcm",
                                  "GDCMJ2K_TextGBR.dcm", "SC_rgb_rle.dcm", "SC_rgb_small_odd_jpeg.dcm"])
def test_compressed_colour_files_decode_to_rgb(name):
    ds = pydicom.dcmread(get_testdata_file(name))
    got = read_image(get_testdata_file(name), channels=3)
    assert np.array_equal(got, ds.pixel_array)  # pydicom converts YBR/ICT/RCT to RGB
    if name.startswith("SC_rgb_") and ds.Rows == 100:  # lossy copies of one RGB test card: close to it
        lossless = read_image(get_testdata_file("SC_rgb_rle.dcm"), channels=3).astype(int)
        assert np.abs(got.astype(int) - lossless).mean() < 6


def test_16_and_32_bit_rgb_use_their_bit_depth():
    for name, bits in (("SC_rgb_rle_16bit.dcm", 16), ("SC_rgb_rle_32bit.dcm", 32)):
        ds = pydicom.dcmread(get_testdata_file(name))
        want = np.round(ds.pixel_array.astype(float) * 255 / (2 ** bits - 1)).astype(np.uint8)
        assert np.array_equal(read_image(get_testdata_file(name), channels=3), want), name


def test_undecodable_names_the_transfer_syntax_and_the_package():
    """JPEG-lossy.dcm: a 12-bit JPEG stream libjpeg rejects (pydicom's tests decode it with GDCM only)."""
    with pytest.raises(DataError) as caught:
        read_image(get_testdata_file("JPEG-lossy.dcm"))
    message = str(caught.value)
    assert "JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51)" in message
    assert "pip install python-gdcm" in message and "\n" not in message and "remove" not in message


def test_undecodable_file_logs_no_traceback_under_the_clis_logging(tmp_path):
    """The CLI logs WARNING and up (logging.basicConfig): pydicom's per-plugin LOGGER.exception records, with
    their tracebacks, must not reach stderr; the DataError line says it all."""
    code = ("import logging; logging.basicConfig(level=logging.WARNING)\n"
            "from pydicom.data import get_testdata_file\n"
            "from medhub.data.images import read_image\n"
            "from medhub.errors import DataError\n"
            "try:\n    read_image(get_testdata_file('JPEG-lossy.dcm'))\n"
            "except DataError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert "JPEG Extended (Process 2 and 4)" in done.stdout and done.stdout.count("\n") == 1
    assert done.stderr == ""


@pytest.mark.parametrize(("name", "syntax"), [
    ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)"),
    # Pillow is installed but cannot read 12-bit JPEG: the missing dependency is still what to install
    ("JPGExtended.dcm", "JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51)"),
])
def test_a_missing_decoder_package_is_named(tmp_path, name, syntax):
    """With pylibjpeg absent (its module hidden), the file names its syntax and medhub's decoder packages."""
    code = ("import sys; sys.modules['pylibjpeg'] = None\n"
            "from pydicom.data import get_testdata_file\n"
            "from medhub.data.images import read_image\n"
            "from medhub.errors import DataError\n"
            f"try:\n    read_image(get_testdata_file('{name}'))\n"
            "except DataError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}).stdout
    assert syntax in out and out.count("\n") == 1
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in out


def test_decoder_packages_are_dependencies():
    text = (ROOT / "pyproject.toml").read_text()
    for package in ("pylibjpeg>=", "pylibjpeg-libjpeg>=", "pylibjpeg-openjpeg>=", "pylibjpeg-rle>="):
        assert f'"{package}' in text, package


# ---- photometric interpretations -------------------------------------------------------------------------

def test_ybr_full_422_uncompressed_to_rgb_and_luma():
    path = get_testdata_file("SC_ybr_full_422_uncompressed.dcm")
    ybr = pixel_array(path, raw=True)
    want = convert_color_space(ybr, "YBR_FULL", "RGB")
    got = read_image(path, channels=3)
    assert np.array_equal(got, want)
    luma = np.round(want.astype(float) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    assert np.array_equal(read_image(path, channels=1), luma)
    assert np.abs(luma.astype(int) - ybr[..., 0].astype(int)).max() <= 2  # BT.601 luma is YBR_FULL's Y


def test_rgb_and_palette_colour(shared_data):
    rgb = pydicom.dcmread(get_testdata_file("examples_rgb_color.dcm")).pixel_array
    assert np.array_equal(read_image(get_testdata_file("examples_rgb_color.dcm"), channels=3), rgb)
    big_endian = read_image(shared_data / "dicom_pydicom" / "ExplVR_BigEnd.dcm", channels=3)
    assert np.array_equal(big_endian, pydicom.dcmread(shared_data / "dicom_pydicom" / "ExplVR_BigEnd.dcm").pixel_array)
    ds = pydicom.dcmread(get_testdata_file("examples_palette.dcm"))
    want = apply_color_lut(ds.pixel_array, ds)
    assert ds.RedPaletteColorLookupTableDescriptor[2] == 16 and want.dtype == np.uint16
    want = np.round(want.astype(float) * 255 / 65535).astype(np.uint8)  # 16-bit palette entries
    got = read_image(get_testdata_file("examples_palette.dcm"), channels=3)
    assert got.shape == (350, 800, 3) and np.array_equal(got, want)
    luma = np.round(want.astype(float) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    assert np.array_equal(read_image(get_testdata_file("examples_palette.dcm"), channels=1), luma)


# ---- multi-frame -----------------------------------------------------------------------------------------

def test_multi_frame_refused_unless_the_task_names_a_frame():
    path = get_testdata_file("SC_rgb_rle_2frame.dcm")
    with pytest.raises(DataError, match="holds 2 frames.*layout.pixels.frame"):
        read_image(path)
    assert np.array_equal(read_image(path, channels=3, rule=PixelRule(frame=1)), pixel_array(path, index=1))
    with pytest.raises(DataError, match="no frame 5"):
        read_image(path, rule=PixelRule(frame=5))
    ybr = get_testdata_file("examples_ybr_color.dcm")  # 30 frames, JPEG baseline YBR_FULL_422
    assert np.array_equal(read_image(ybr, channels=3, rule=PixelRule(frame=29)),
                          pydicom.dcmread(ybr).pixel_array[29])


def test_multi_page_tiff_follows_the_same_rule(tmp_path, shared_data):
    pngs = sorted((shared_data / "nih_cxr14_1000_64px" / "NIH1000" / "train" / "0_normal").glob("*.png"))[:2]
    pages = [Image.open(p).convert("L") for p in pngs]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with pytest.raises(DataError, match="holds 2 frames"):
        read_image(path)
    assert np.array_equal(read_image(path, rule=PixelRule(frame=1)), np.asarray(pages[1]))


# ---- PNG / TIFF: bit depth, palette, alpha ---------------------------------------------------------------

def with_sbit(png: Path, bits: int) -> None:
    """Insert an sBIT chunk (PNG 11.3.3.4) right after IHDR."""
    data = png.read_bytes()
    chunk = b"sBIT" + bytes([bits])
    end = 8 + 8 + 13 + 4
    png.write_bytes(data[:end] + struct.pack(">I", 1) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[end:])


def test_sixteen_bit_png_and_tiff_keep_their_range(tmp_path, shared_data):
    png = next((shared_data / "nih_cxr14_1000_64px" / "NIH1000" / "train" / "1_abnormal").glob("*.png"))
    grey = np.asarray(Image.open(png).convert("L")).astype(np.uint16)
    twelve = grey * 8  # 12-bit data (0..2040) in a 16-bit file, as X-ray exports store it
    for suffix in (".png", ".tif"):
        path = tmp_path / f"x{suffix}"
        Image.fromarray(twelve).save(path)
        want16 = np.round(twelve.astype(float) * 255 / 65535).astype(np.uint8)
        assert np.array_equal(read_image(path), want16), suffix  # no sBIT: 0..65535
        want12 = np.round(twelve.astype(float) * 255 / 4095).astype(np.uint8)
        assert np.array_equal(read_image(path, rule=PixelRule(bits=12)), want12), suffix
    with_sbit(tmp_path / "x.png", 12)
    assert np.array_equal(read_image(tmp_path / "x.png"), np.round(twelve.astype(float) * 255 / 4095).astype(np.uint8))


def test_palette_png_and_alpha(tmp_path, shared_data):
    png = next((shared_data / "nih_cxr14_1000_64px" / "NIH1000" / "train" / "1_abnormal").glob("*.png"))
    grey = np.asarray(Image.open(png).convert("L"))
    rgb = np.stack([grey, 255 - grey, grey // 2], axis=-1)
    palette = Image.fromarray(rgb).quantize(64)
    palette.save(tmp_path / "p.png")
    assert np.array_equal(read_image(tmp_path / "p.png", channels=3), np.asarray(palette.convert("RGB")))
    Image.fromarray(grey).convert("P").save(tmp_path / "gp.png")  # a grey palette: one channel
    assert np.array_equal(read_image(tmp_path / "gp.png"), grey)
    alpha = np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (64, 1))
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "a.png")
    want = np.round(rgb * (alpha[..., None] / 255.0)).astype(np.uint8)
    assert np.array_equal(read_image(tmp_path / "a.png", channels=3), want)  # composited onto black
    Image.fromarray(np.dstack([grey, alpha])).save(tmp_path / "la.png")
    assert np.array_equal(read_image(tmp_path / "la.png"), np.round(grey * (alpha / 255.0)).astype(np.uint8))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_image_and_mask_alike(tmp_path, orientation):
    image = np.zeros((20, 40, 3), np.uint8)
    image[:6, :10] = (200, 30, 30)
    mask = np.zeros((20, 40), np.uint8)
    mask[:6, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(image).save(tmp_path / "photo.jpg", quality=98, exif=exif.tobytes())
    Image.fromarray(mask).save(tmp_path / "mask.png", exif=exif.tobytes())
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "photo.jpg")))
    got = read_image(tmp_path / "photo.jpg", channels=3)
    assert np.array_equal(got, shown)
    got_mask = read_mask([tmp_path / "mask.png"])
    assert got_mask.shape == got.shape[:2]
    assert np.array_equal(got_mask == 1, got[..., 0] > 100)  # the mask still covers the red block


def test_sixteen_bit_masks_keep_small_labels(tmp_path):
    mask = np.zeros((8, 8), np.uint16)
    mask[2:4, 2:4] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert read_mask([tmp_path / "m.png"]).sum() == 4


# ---- through medhub.data: the rule in the notes, the cache manifest and the key ---------------------------

def dicom_task():
    base = load_registry().get_task("breastmnist")
    layout = base.layout.model_copy(update={"reader": "image_folder", "files": (), "md5": {}})
    return base.model_copy(update={"id": "ct-folder", "labels": ("a", "b"), "layout": layout})


def test_rule_recorded_in_notes_and_manifest_and_a_changed_rule_rebuilds(tmp_path, shared_data):
    ct = pydicom.dcmread(shared_data / "dicom_pydicom" / "CT_small.dcm")
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = tmp_path / "data" / split / label
            folder.mkdir(parents=True)
            for i in range(2):
                copy.deepcopy(ct).save_as(folder / f"{label}{i}.dcm")
    task = dicom_task()
    data = load_task_data(task, tmp_path / "data")
    assert any(n.startswith("pixels: DICOM VOI: the file's") and "bit_depth" in n for n in data.notes)
    first = cached_split(task.id, data.split("test"), 32, 1, progress=False)
    manifest = json.loads(first.path.with_suffix(".json").read_text())
    assert manifest["pixels"]["rule"]["window"] is None and manifest["pixels"]["rule"]["no_window"] == "bit_depth"
    lung = load_task_data(task, tmp_path / "data", pixels={"window": (-600, 1500)})
    assert any("window -600/1500 LINEAR" in n for n in lung.notes)
    second = cached_split(task.id, lung.split("test"), 32, 1, progress=False)
    assert second.path != first.path and not first.path.exists()  # rebuilt, the stale array removed
    assert json.loads(second.path.with_suffix(".json").read_text())["pixels"]["rule"]["window"] == [-600, 1500]
    hu = apply_modality_lut(ct.pixel_array, ct)
    want = np.asarray(Image.fromarray(linear_window(hu, -600, 1500)).resize((32, 32), Image.Resampling.BILINEAR))
    assert np.array_equal(second.images[0, 0], want)
    task_rule = task.model_copy(update={"layout": task.layout.model_copy(
        update={"pixels": PixelRule(window=(-600, 1500))})})
    assert load_task_data(task_rule, tmp_path / "data").split("test").pixels == PixelRule(window=(-600, 1500))
    with pytest.raises(DataError, match="invalid pixel rule.*window width must be >= 1"):
        load_task_data(task, tmp_path / "data", pixels={"window": (40, 0.5)})


def test_pixel_rule_schema_rejects_bad_values():
    with pytest.raises(ValueError, match="> 0 for SIGMOID"):
        PixelRule(window=(0, 0), voi_function="SIGMOID")
    with pytest.raises(ValueError):
        PixelRule(frame=-1)
    with pytest.raises(ValueError):
        PixelRule(bits=17)
    assert PixelRule(window=(0, 0.5), voi_function="LINEAR_EXACT").window == (0, 0.5)
    # a window that is not a pair of finite numbers would map every pixel to one grey level (or NaN)
    for window in ((float("nan"), 400), (40, float("nan")), (40, float("inf")), (float("-inf"), 400)):
        with pytest.raises(ValueError, match="finite"):
            PixelRule(window=window)



@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_reproduce_on_a_dicom_folder_task_records_the_users_window(tmp_path, shared_data, monkeypatch, capsys):
    """medhub reproduce on class folders of CT DICOMs with --window: the rule in plan, report and manifest."""
    from medhub.cli import main
    from medhub.data.paths import cache_root
    from medhub.registry import clear_cache

    monkeypatch.setenv("MEDHUB_REGISTRY", str(ROOT / "examples" / "nih1000_task.yaml"))
    clear_cache()
    ct = pydicom.dcmread(shared_data / "dicom_pydicom" / "CT_small.dcm")
    for split in ("train", "valid", "test"):
        for k, label in enumerate(("0_normal", "1_abnormal")):
            folder = tmp_path / "data" / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                ds = copy.deepcopy(ct)
                ds.PixelData = (ct.pixel_array + 40 * (i + 3 * k)).astype(np.int16).tobytes()
                ds.save_as(folder / f"{label}{i}.dcm")
    out = tmp_path / "out"
    args = ["reproduce", "random:test_resnet", "nih1000", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
            "--out", str(out), "--no-progress"]
    assert main([*args, "--window=-600,1500", "--voi-function", "LINEAR_EXACT"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert any("window -600/1500 LINEAR_EXACT" in n for n in report["protocol"]["data_notes"])
    assert json.loads((out / "plan.json").read_text())["pixels"]["window"] == [-600, 1500]
    manifests = [json.loads(p.read_text()) for p in (cache_root() / "nih1000").glob("*.json")]
    assert len(manifests) == 3 and all(m["pixels"]["rule"]["voi_function"] == "LINEAR_EXACT" for m in manifests)
    capsys.readouterr()
    assert main([*args, "--window", "40"]) == 2
    assert "--window takes CENTER,WIDTH" in capsys.readouterr().err
    assert main([*args, "--window=40,0", "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "window width must be >= 1" in err and "\n" not in err
    clear_cache()


def test_dicoms_without_dcm_suffix_are_found_and_read(tmp_path, shared_data):
    """DICOM exports named IM000001 or by their SOP Instance UID: found by the 'DICM' marker, read alike."""
    mr = shared_data / "dicom_pydicom" / "MR_small.dcm"
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            shutil.copy(mr, folder / "IM000001")
            shutil.copy(mr, folder / "1.2.840.10008.5.1.4.1234")
            (folder / "README").write_text("not an image")
    data = load_task_data(dicom_task(), tmp_path)
    paths = data.split("test").paths
    assert len(paths) == 4 and {p.name for p in paths} == {"IM000001", "1.2.840.10008.5.1.4.1234"}
    assert all(np.array_equal(read_image(p), read_image(mr)) for p in paths)


def test_jsrt_raw_is_12_bit_with_high_values_dark(tmp_path):
    """JSRT .IMG: 2048x2048 big-endian 12-bit; 0..4095 onto 255..0, the same for every image."""
    values = (np.arange(2048 * 2048) % 4096).astype(">u2").reshape(2048, 2048)
    values.tofile(tmp_path / "JPCLN001.IMG")
    got = read_image(tmp_path / "JPCLN001.IMG")
    assert np.array_equal(got, 255 - np.round(values.astype(float) * 255 / 4095).astype(np.uint8))


def test_enhanced_multi_frame_uses_the_frames_functional_groups(tmp_path, shared_data):
    """Enhanced CT keeps rescale and window per frame (PS3.3 C.7.6.16): frame 1 uses its own window."""
    ct = pydicom.dcmread(shared_data / "dicom_pydicom" / "CT_small.dcm")
    stored = ct.pixel_array
    ds = copy.deepcopy(ct)
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([stored, stored + 100]).astype(np.int16).tobytes()
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 2, -2048, "HU"
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for center, width in ((-600, 1500), (40, 400)):
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        group = Dataset()
        group.FrameVOILUTSequence = Sequence([voi])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    path = save(ds, tmp_path, "enhanced.dcm")
    got = read_image(path, rule=PixelRule(frame=1))
    assert np.array_equal(got, linear_window((stored + 100) * 2.0 - 2048, 40, 400))
    assert np.array_equal(read_image(path, rule=PixelRule(frame=0)), linear_window(stored * 2.0 - 2048, -600, 1500))


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "I;16", "1"])
def test_read_image_with_a_size_gives_the_pixels_of_resizing_afterwards(tmp_path, mode):
    """``read_image(..., size=N)`` (what the decode-once cache calls; 8-bit grey is resized inside Pillow)
    returns exactly ``resize(read_image(...), N)``, for every mode, both channel counts, down and up."""
    from PIL import Image

    from medhub.data.images import read_image, resize

    rng = np.random.default_rng(3)
    smooth = np.kron(rng.integers(0, 256, (12, 16)), np.ones((10, 10))).astype(np.uint8)  # 120 x 160
    image = Image.fromarray(smooth)
    if mode == "I;16":
        image = Image.fromarray(smooth.astype(np.uint16) * 257)  # mode I;16
    elif mode != "L":
        image = Image.merge("RGB", [image, image.rotate(90, expand=False), image.transpose(Image.FLIP_LEFT_RIGHT)])
        image = image.convert(mode)
    path = tmp_path / f"image-{mode.replace(';', '')}.png"
    image.save(path)
    for channels in (1, 3):
        for size in (48, 200):
            got = read_image(path, channels, size=size)
            assert got.shape[:2] == (size, size)
            assert np.array_equal(got, resize(read_image(path, channels), size))
