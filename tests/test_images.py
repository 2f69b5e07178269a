"""images.load_image / to_8bit: every PIL mode and bit depth reaches 8 bits by its range, never by clipping."""

import struct
import types
import zlib

import numpy as np
import pytest
from PIL import Image

from mixmatch.data import images as images_module
from mixmatch.data.dataset import DataError
from mixmatch.data.images import ImageError, is_image_file, load_image, to_8bit

# A ramp over 8x8 pixels from 0 to 63 * 1000 = 63000 of 65535: 16-bit values that clip to 255 at 8 bits.
RAMP16 = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
RAMP16_AS_8BIT = np.round(RAMP16 / 257).astype(np.uint8)  # 0, 4, 8, ... 245


def png16(path, values: np.ndarray) -> None:
    """A 16-bit RGB (H, W, 3) or RGBA (H, W, 4) PNG, written by hand: PIL cannot write these."""
    height, width, channels = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, {3: 2, 4: 6}[channels], 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def test_a_dark_16_bit_image_decodes_to_a_mean_near_64(tmp_path):
    """The issue's example: values around 16,000 of 65,535 were decoded as all 255."""
    values = np.random.default_rng(0).integers(15_000, 17_000, (32, 32)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "dark.png")
    assert Image.open(tmp_path / "dark.png").mode == "I;16"
    decoded = load_image(tmp_path / "dark.png", 32)
    assert decoded.dtype == np.uint8 and decoded.shape == (32, 32)
    assert abs(decoded.mean() - 64) < 3 and decoded.mean() == pytest.approx(values.mean() / 257, abs=0.5)
    assert decoded.max() < 70  # nothing near white


def grey_case(mode: str) -> tuple[Image.Image, np.ndarray]:
    """An in-memory image of `mode` and the 8-bit grey values it must decode to."""
    if mode in ("I;16", "I;16L", "I;16N"):
        return Image.frombytes(mode, (8, 8), RAMP16.astype("<u2").tobytes()), RAMP16_AS_8BIT
    if mode == "I;16B":
        return Image.frombytes(mode, (8, 8), RAMP16.astype(">u2").tobytes()), RAMP16_AS_8BIT
    if mode == "I":  # 16-bit data in 32 bits, as PIL opens 16-bit PGMs
        return Image.fromarray(RAMP16.astype(np.int32)), RAMP16_AS_8BIT
    if mode == "I wide":  # beyond 16 bits: the image's own range
        values = RAMP16.astype(np.int32) * 10 - 100_000
        return Image.fromarray(values), np.round(np.arange(64).reshape(8, 8) * 255 / 63).astype(np.uint8)
    if mode == "F":  # 0..1
        values = (np.arange(64).reshape(8, 8) / 63).astype(np.float32)
        return Image.fromarray(values), np.round(values.astype(np.float64) * 255).astype(np.uint8)
    if mode == "F wide":  # e.g. Hounsfield units or photon counts: the image's own range
        values = (np.arange(64).reshape(8, 8) * 50.0 - 1000).astype(np.float32)
        return Image.fromarray(values), np.round(np.arange(64).reshape(8, 8) * 255 / 63).astype(np.uint8)
    if mode == "1":
        bits = np.arange(64).reshape(8, 8) % 2 == 0
        return Image.fromarray(bits), np.where(bits, 255, 0).astype(np.uint8)
    grey = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    alpha = np.full((8, 8), 255, np.uint8)
    alpha[0] = 0  # a transparent first row, hiding white
    hidden = grey.copy()
    hidden[0] = 255
    expected = grey.copy()
    expected[0] = 0  # over black
    return Image.fromarray(np.stack([hidden, alpha], -1), "LA"), expected


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N", "I", "I wide", "F", "F wide", "1", "LA"])
def test_grey_modes_scale_by_their_range(mode):
    image, expected = grey_case(mode)
    assert image.mode == mode.split()[0]
    decoded = to_8bit(image)
    assert decoded.mode == "L"
    np.testing.assert_array_equal(np.asarray(decoded), expected)


def test_float_images_with_nan_and_a_constant_image_do_not_fail():
    values = np.array([[np.nan, 2.0], [np.inf, 4.0]], dtype=np.float32)
    assert np.asarray(to_8bit(Image.fromarray(values))).tolist() == [[0, 0], [0, 255]]
    assert np.asarray(to_8bit(Image.fromarray(np.full((2, 2), 7.0, np.float32)))).tolist() == [[0, 0], [0, 0]]


def test_colour_modes_become_rgb():
    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(to_8bit(Image.fromarray(rgb))), rgb)
    cmyk = to_8bit(Image.new("CMYK", (4, 4), (0, 255, 0, 0)))  # magenta ink
    assert cmyk.mode == "RGB" and np.asarray(cmyk)[0, 0].tolist() == [255, 0, 255]
    rgba = np.dstack([rgb, np.full((8, 8), 255, np.uint8)])
    rgba[0, :, 3] = 0
    over_black = to_8bit(Image.fromarray(rgba, "RGBA"))
    assert over_black.mode == "RGB" and np.asarray(over_black)[0].max() == 0
    np.testing.assert_array_equal(np.asarray(over_black)[1:], rgb[1:])
    for mode in ("YCbCr", "LAB", "HSV", "RGBX", "RGBa", "PA", "La"):
        assert to_8bit(Image.new(mode, (4, 4))).mode in ("L", "RGB"), mode


def test_palette_transparency_is_black(tmp_path):
    palette = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), "P")
    palette.putpalette([255, 255, 255, 200, 0, 0, 0, 0, 200])
    palette.save(tmp_path / "icon.png", transparency=0)  # index 0 (white) is transparent
    decoded = load_image(tmp_path / "icon.png", 2)
    assert decoded.shape == (2, 2, 3)
    assert decoded[0, 0].tolist() == [0, 0, 0] and decoded[0, 1].tolist() == [200, 0, 0]


@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_rgb_pngs_keep_their_range(tmp_path, channels):
    values = np.dstack([RAMP16, RAMP16 // 2, np.full_like(RAMP16, 16_000), np.full_like(RAMP16, 65535)])
    png16(tmp_path / "colour16.png", values[..., :channels])
    decoded = load_image(tmp_path / "colour16.png", 8)
    assert decoded.shape == (8, 8, 3)
    # PIL keeps the high byte of each 16-bit value (x / 256, rounded down); nothing reaches 255 that was not near it.
    np.testing.assert_array_equal(decoded[..., 0], RAMP16 // 256)
    np.testing.assert_array_equal(decoded[..., 1], RAMP16 // 2 // 256)
    assert (decoded[..., 2] == 62).all()


@pytest.mark.parametrize(
    ("mode", "suffix"), [("I;16", ".png"), ("I;16", ".tif"), ("I;16B", ".tif"), ("I", ".tif"), ("F", ".tif")]
)
def test_16_bit_and_float_files_decode_without_clipping(tmp_path, mode, suffix):
    image, expected = grey_case(mode)
    image.save(tmp_path / f"ramp{suffix}")
    decoded = load_image(tmp_path / f"ramp{suffix}", 8)
    np.testing.assert_array_equal(decoded, expected)
    assert (np.diff(decoded.ravel().astype(int)) > 0).all()  # every level stays apart


def test_channels_and_size_follow_the_model(tmp_path):
    Image.fromarray(RAMP16).save(tmp_path / "ramp.png")
    rgb = load_image(tmp_path / "ramp.png", 8, channels=3)
    assert rgb.shape == (8, 8, 3) and (rgb[..., 0] == RAMP16_AS_8BIT).all() and (rgb[..., 2] == rgb[..., 0]).all()
    assert load_image(tmp_path / "ramp.png", 4).shape == (4, 4)
    colour = np.zeros((6, 12, 3), np.uint8)
    colour[..., 1] = 90
    Image.fromarray(colour).save(tmp_path / "green.png")
    assert load_image(tmp_path / "green.png", 4, channels=1).shape == (4, 4)


def test_unreadable_files_and_unknown_modes_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ImageError, match=r"notes.png is not an image file that PIL can read") as caught:
        load_image(tmp_path / "notes.png", 8)
    assert caught.value.reason == "not an image" and isinstance(caught.value, DataError)
    with pytest.raises(ImageError, match="pixel mode I;32 cannot be converted to 8-bit grey or RGB"):
        to_8bit(types.SimpleNamespace(mode="I;32", info={}))
    Image.new("CMYK", (4, 4)).save(tmp_path / "ink.tif")
    monkeypatch.setattr(images_module, "_TO_RGB", set())  # as if PIL had a mode this module does not know
    with pytest.raises(ImageError) as caught:
        load_image(tmp_path / "ink.tif", 4)
    assert (
        str(caught.value)
        == f"cannot read image {tmp_path / 'ink.tif'}: pixel mode CMYK cannot be converted to 8-bit grey or RGB"
    )
    assert caught.value.reason == "pixel mode CMYK"


def test_image_suffixes():
    assert is_image_file("a/B.PNG") and is_image_file("scan.tiff") and is_image_file("x.jpeg")
    assert not is_image_file("labels.csv") and not is_image_file("notes.txt") and not is_image_file("README")
