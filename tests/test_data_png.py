"""PNG decoding: the OpenCV path for plain 8-bit PNGs gives exactly Pillow's samples, every other kind goes to
Pillow. Files are written here byte by byte (every row filter, Adam7 interlacing, ancillary chunks), so the
decoders are checked on what the PNG standard allows, not only on what one encoder writes."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medhub.data import images
from medhub.errors import DataError

ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def filtered_rows(array: np.ndarray, rng: np.random.Generator) -> bytes:
    """Rows of ``array`` (H, W[, 3]) uint8, each with a random filter type 0-4 (PNG 9.2)."""
    height = array.shape[0]
    if height == 0 or array.shape[1] == 0:
        return b""
    bpp = 1 if array.ndim == 2 else 3
    rows = array.reshape(height, -1).astype(np.int64)
    out = bytearray()
    for y in range(height):
        kind = int(rng.integers(0, 5))
        raw = rows[y]
        prior = rows[y - 1] if y else np.zeros_like(raw)
        left = np.concatenate([np.zeros(bpp, np.int64), raw[:-bpp]])
        upper_left = np.concatenate([np.zeros(bpp, np.int64), prior[:-bpp]])
        if kind == 0:
            line = raw
        elif kind == 1:
            line = raw - left
        elif kind == 2:
            line = raw - prior
        elif kind == 3:
            line = raw - (left + prior) // 2
        else:
            line = raw - np.array([paeth(a, b, c) for a, b, c in zip(left, prior, upper_left, strict=True)])
        out.append(kind)
        out += (line % 256).astype(np.uint8).tobytes()
    return bytes(out)


def encode_png(array: np.ndarray, *, interlace: bool = False, extra: tuple[tuple[bytes, bytes], ...] = (),
               depth: int = 8, colour: int | None = None, seed: int = 0) -> bytes:
    """A PNG of ``array`` (grey (H, W) or RGB (H, W, 3), uint8) with random row filters."""
    rng = np.random.default_rng(seed)
    height, width = array.shape[:2]
    colour = (0 if array.ndim == 2 else 2) if colour is None else colour
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, int(interlace))
    if interlace:
        raw = b"".join(filtered_rows(array[y0::dy, x0::dx], rng) for x0, y0, dx, dy in ADAM7)
    else:
        raw = filtered_rows(array, rng)
    return (images.PNG_SIGNATURE + chunk(b"IHDR", header) + b"".join(chunk(k, d) for k, d in extra)
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def pillow_only(path: Path, channels: int = 1, size: int | None = None) -> np.ndarray:
    """What read_image gives through Pillow alone (the path every non-plain file takes)."""
    array = images.set_channels(images.read_pil(path, size, images.DEFAULT_RULE, size), channels)
    return array if size is None else images.resize(array, size)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


ANCILLARY = ((b"gAMA", struct.pack(">I", 45455)), (b"sRGB", b"\x00"), (b"pHYs", struct.pack(">IIB", 2835, 2835, 1)),
             (b"tEXt", b"Comment\x00exported by a viewer"), (b"sBIT", b"\x06"), (b"bKGD", struct.pack(">H", 255)),
             (b"cHRM", struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)),
             (b"tIME", struct.pack(">HBBBBB", 2026, 12, 1, 3, 40, 0)))  # what ImageMagick and viewers write


def ancillary(colour: str) -> tuple[tuple[bytes, bytes], ...]:
    """ANCILLARY with sBIT and bKGD sized for the colour type (one sample per channel)."""
    if colour == "grey":
        return ANCILLARY
    per_channel = {b"sBIT": b"\x06\x06\x06", b"bKGD": struct.pack(">3H", 255, 0, 128)}
    return tuple((kind, per_channel.get(kind, body)) for kind, body in ANCILLARY)


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("colour", ["grey", "rgb", "rgb_equal"])
@pytest.mark.parametrize("shape", [(37, 53), (1, 1), (8, 3), (64, 64)])
def test_plain_png_samples_equal_the_source_and_pillow(tmp_path, interlace, colour, shape):
    rng = np.random.default_rng(sum(shape))
    grey = rng.integers(0, 256, shape, dtype=np.uint8)
    array = {"grey": grey, "rgb": rng.integers(0, 256, (*shape, 3), dtype=np.uint8),
             "rgb_equal": np.repeat(grey[..., None], 3, axis=2)}[colour]
    extra = ancillary(colour)
    data = encode_png(array, interlace=interlace, extra=extra)
    path = write(tmp_path, "x.png", data)
    assert images.plain_png(data)
    decoded = images.read_plain_png(data)
    expected = grey if colour != "rgb" else array  # RGB with equal channels comes back grey
    assert decoded is not None and np.array_equal(decoded, expected)
    for channels in (1, 3):
        assert np.array_equal(images.read_image(path, channels=channels), pillow_only(path, channels))
    assert np.array_equal(images.read_image(path, size=16), pillow_only(path, size=16))


def test_every_shared_png_reads_as_pillow_reads_it(shared_data):
    paths = sorted((shared_data / "nih_cxr14_1000_64px").rglob("*.png"))
    assert len(paths) == 1000
    plain = 0
    for path in paths:
        plain += images.plain_png(path.read_bytes())
        for channels in (1, 3):
            assert np.array_equal(images.read_image(path, channels=channels), pillow_only(path, channels)), path
    assert plain > 0  # the fast path is taken on this data (the others: RGBA or other kinds, through Pillow)


def test_a_radiograph_resized_for_the_cache_equals_pillows(shared_data, tmp_path):
    """The cache's case: a 1024 px grey PNG saved by Pillow, read at 256 px, both paths."""
    source = next((shared_data / "nih_cxr14_1000_64px").rglob("*.png"))
    big = Image.open(source).convert("L").resize((1024, 1024), Image.Resampling.BICUBIC)
    path = tmp_path / "big.png"
    big.save(path)
    assert images.plain_png(path.read_bytes())
    assert np.array_equal(images.read_image(path, size=256), pillow_only(path, size=256))


def pillow_png(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **options)
    return out.getvalue()


def not_plain_kinds() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 clockwise to view
    palette = Image.fromarray(grey).convert("P")
    frames = [Image.fromarray(grey), Image.fromarray(255 - grey)]
    apng = io.BytesIO()
    frames[0].save(apng, format="PNG", save_all=True, append_images=frames[1:])
    return {
        "grey_with_tRNS": encode_png(grey, extra=((b"tRNS", b"\x00\x07"),)),
        "rgb_with_tRNS": encode_png(rgb, extra=((b"tRNS", b"\x00\x01\x00\x02\x00\x03"),)),
        "sixteen_bit": pillow_png(Image.fromarray(grey.astype(np.uint16) * 257)),
        "palette": pillow_png(palette),
        "grey_alpha": pillow_png(Image.fromarray(np.stack([grey, grey], -1), "LA")),
        "rgba": pillow_png(Image.fromarray(np.concatenate([rgb, grey[..., None]], -1), "RGBA")),
        "exif_orientation": pillow_png(Image.fromarray(grey), exif=exif),
        "animated": apng.getvalue(),
        "one_bit": pillow_png(Image.fromarray(grey > 127)),
    }


@pytest.mark.parametrize("kind", sorted(not_plain_kinds()))
def test_other_png_kinds_go_to_pillow(tmp_path, kind):
    data = not_plain_kinds()[kind]
    path = write(tmp_path, f"{kind}.png", data)
    assert not images.plain_png(data)
    if kind == "animated":
        with pytest.raises(DataError, match="frames"):
            images.read_image(path)
        return
    read = images.read_image(path)
    assert np.array_equal(read, pillow_only(path))
    if kind == "exif_orientation":
        assert read.shape == (30, 20)  # turned as the EXIF Orientation says


def test_damaged_pngs_fail_with_one_line(tmp_path):
    grey = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    data = encode_png(grey)
    truncated = write(tmp_path, "truncated.png", data[: len(data) // 2])
    assert not images.plain_png(truncated.read_bytes())
    idat = data.index(b"IDAT") + 4
    garbled = bytearray(data)
    garbled[idat + 2: idat + 40] = bytes(38)  # chunk structure intact, deflate stream broken
    broken = write(tmp_path, "broken.png", bytes(garbled))
    assert images.plain_png(bytes(garbled))
    assert images.read_plain_png(bytes(garbled)) is None
    for path in (truncated, broken):
        with pytest.raises(DataError, match="cannot decode image") as caught:
            images.read_image(path)
        assert "\n" not in str(caught.value)


XMP_ORIENTATION = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                   b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF>'
                   b'</x:xmpmeta>')


def raw_profile_exif() -> bytes:
    """ImageMagick's "Raw profile type exif" text: a name line, the byte count, the EXIF block in hex."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 clockwise to view
    block = exif.tobytes()
    return f"\nexif\n{len(block):8d}\n{block.hex()}\n".encode()


@pytest.mark.parametrize("text", ["xmp_itxt", "raw_profile_ztxt", "raw_profile_text"])
def test_an_orientation_in_a_text_chunk_sends_the_file_to_pillow(tmp_path, text):
    """Pillow's getexif() reads an orientation from XMP (iTXt "XML:com.adobe.xmp") and from ImageMagick's
    "Raw profile type exif" text, and the image is turned by it: a 20x30 file is read 30x20, as Pillow reads it."""
    grey = np.random.default_rng(4).integers(0, 256, (20, 30), dtype=np.uint8)
    extra = {"xmp_itxt": (b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + XMP_ORIENTATION),
             "raw_profile_ztxt": (b"zTXt", b"Raw profile type exif\x00\x00" + zlib.compress(raw_profile_exif())),
             "raw_profile_text": (b"tEXt", b"Raw profile type exif\x00" + raw_profile_exif())}[text]
    data = encode_png(grey, extra=(extra,))
    path = write(tmp_path, "turned.png", data)
    assert not images.plain_png(data)
    read = images.read_image(path)
    assert read.shape == (30, 20) and np.array_equal(read, np.rot90(grey, -1))
    assert np.array_equal(read, pillow_only(path))


def test_a_bad_crc_before_idat_is_refused_as_pillow_refuses_it(tmp_path):
    """PNG 5.3: Pillow checks the CRC of every chunk before IDAT and refuses the file; libpng would skip a bad
    ancillary chunk and decode. After IDAT, Pillow skips the CRC, so the file stays plain and decodes."""
    grey = np.random.default_rng(6).integers(0, 256, (20, 30), dtype=np.uint8)
    good = encode_png(grey, extra=((b"gAMA", struct.pack(">I", 45455)),))
    at = good.index(b"gAMA") + 8  # the gAMA chunk's CRC
    before = good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1:]
    assert images.plain_png(good) and not images.plain_png(before)
    with pytest.raises(DataError, match="cannot decode image"):
        images.read_image(write(tmp_path, "before.png", before))
    end = good.index(b"IEND") - 4
    after = good[:end] + chunk(b"tEXt", b"Comment\x00x")[:-1] + b"\x00" + good[end:]
    assert images.plain_png(after)
    path = write(tmp_path, "after.png", after)
    assert np.array_equal(images.read_image(path), grey) and np.array_equal(pillow_only(path), grey)


def test_more_pixels_than_pillow_allows_goes_to_pillows_bomb_guard(tmp_path, monkeypatch):
    """Pillow refuses more than twice Image.MAX_IMAGE_PIXELS (a decompression bomb: a few hundred kB that
    inflate to gigabytes); OpenCV's own limit is 2**30 pixels. The limit lowered to 250 pixels, a 20x30 file
    (600 pixels) is Pillow's to refuse; with the guard switched off (None) it is plain again."""
    grey = np.random.default_rng(7).integers(0, 256, (20, 30), dtype=np.uint8)
    data = encode_png(grey)
    path = write(tmp_path, "bomb.png", data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250)
    assert not images.plain_png(data)
    with pytest.raises(DataError, match="DecompressionBombError"):
        images.read_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert images.plain_png(data) and np.array_equal(images.read_image(path), grey)


def test_damaged_bytes_anywhere_give_pillows_outcome(tmp_path):
    """1-3 random bytes changed anywhere in a plain PNG with every ancillary chunk: read_image gives what Pillow
    alone gives, the same samples or a DataError (the chunk walk ends on any length; before the CRC check, 60
    of these 400 files decoded through OpenCV where Pillow refuses them)."""
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (12, 9), dtype=np.uint8)
    base = encode_png(grey, extra=ANCILLARY)
    plain = 0
    for number in range(400):
        data = bytearray(base)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        path = write(tmp_path, f"{number}.png", bytes(data))
        plain += images.plain_png(bytes(data))
        try:
            expected = pillow_only(path)
        except Exception:  # noqa: BLE001 - read_image wraps whatever Pillow raises
            with pytest.raises(DataError):
                images.read_image(path)
            continue
        assert np.array_equal(images.read_image(path), expected), number
    assert plain > 50  # the fast path was taken on many of them


NOISY_CHUNKS = {  # each makes libpng print a "libpng warning: ..." line on stderr; Pillow reads them silently
    "iCCP": (b"iCCP", b"p\x00\x00" + zlib.compress(b"not a real profile")),
    "zTXt": (b"zTXt", b"Comment\x00\x00garbage"),
    "iTXt": (b"iTXt", b"Comment\x00\x01\x00xx"),
    "gAMA_short": (b"gAMA", b"\x00\x00\x01"),
    "sRGB_intent_9": (b"sRGB", b"\x09"),
    "sBIT_9": (b"sBIT", b"\x09"),
    "bKGD_above_255": (b"bKGD", b"\xff\xff"),
    "tIME_month_13": (b"tIME", struct.pack(">HBBBBB", 2020, 13, 40, 25, 61, 61)),
}


@pytest.mark.parametrize("kind", sorted(NOISY_CHUNKS))
def test_chunks_libpng_would_warn_about_go_to_pillow(tmp_path, capfd, kind):
    """libpng (inside OpenCV) prints a warning on stderr for these chunks, once per file: thousands of lines when a
    dataset's PNGs carry, e.g., a bad sRGB ICC profile. Such files go to Pillow, which reads them silently."""
    grey = np.random.default_rng(8).integers(0, 256, (10, 14), dtype=np.uint8)
    data = encode_png(grey, extra=(NOISY_CHUNKS[kind],))
    assert not images.plain_png(data)
    path = write(tmp_path, "noisy.png", data)
    if kind == "gAMA_short":  # Pillow refuses a truncated gAMA chunk: the same one-line error as any bad file
        with pytest.raises(DataError, match="Truncated gAMA"):
            images.read_image(path)
    else:
        assert np.array_equal(images.read_image(path), grey)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("colour", ["grey", "rgb"])
def test_the_opencv_path_prints_nothing(tmp_path, capfd, colour):
    """A plain PNG with every ancillary chunk the fast path accepts decodes through OpenCV with nothing on stderr."""
    rng = np.random.default_rng(9)
    array = rng.integers(0, 256, (10, 14) if colour == "grey" else (10, 14, 3), dtype=np.uint8)
    data = encode_png(array, extra=ancillary(colour), interlace=True)
    assert images.plain_png(data)
    assert np.array_equal(images.read_image(write(tmp_path, "quiet.png", data), channels=array.ndim * 2 - 3), array)
    assert capfd.readouterr().err == ""
