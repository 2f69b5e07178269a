"""Image files to uint8 arrays, the one decoder of the folder loader and `predict`.

It says which files are images (by suffix), turns an image upright by its EXIF tag, brings every PIL
mode and bit depth to 8-bit grey or RGB by scaling its value range (never by clipping), and scales its
shorter side to the model's size and centre-crops it to a square.

How each mode reaches 8 bits (`to_8bit`):

- `L`, `RGB`: as they are. `1`: 0 and 255. `P`, `PA`, `CMYK`, `YCbCr`, `LAB`, `HSV`, `RGBX`: PIL's
  conversion to RGB. 16-bit RGB/RGBA PNGs and TIFFs: PIL keeps their high byte (16000 -> 62).
- `I;16`, `I;16B`, `I;16L`, `I;16N` (16-bit grey: scanners, microscopes, medical exports): the type's range,
  0..65535 -> 0..255 (divided by 257), the same for every image, so a dark image stays dark (16448 -> 64)
  and dark and bright images stay apart. A 12-bit camera's images (0..4095) therefore come out dark, with 17
  grey levels (4095 -> 16); stretch them to 16 bits before training where their fine levels matter.
- `I` (32-bit integers): values within 0..65535 are 16-bit data held in 32 bits and scale as `I;16`; other
  values (negative ones, or above 65535) are stretched from the image's own minimum..maximum to 0..255.
- `F` (32-bit floats): values within 0..1 are scaled by 255; other values are stretched from the image's own
  minimum..maximum (NaN and infinities count as the minimum).
- An alpha channel (`LA`, `La`, `RGBA`, `RGBa`, `PA`, `P` with transparency) is applied over black: a
  transparent pixel is 0, whatever colour it hides.

A mode none of these cover raises ImageError naming it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..runfolder import OUR_SOFTWARE, is_output_folder
from .dataset import DataError

if TYPE_CHECKING:
    from PIL.Image import Image

# Bump when a file's decoded pixels change, so that caches of earlier decodings are not re-used.
# 1: PIL's convert("L"/"RGB"), which clips 16-bit and float grey to 255. 2: `to_8bit`.
DECODER_VERSION = 2

# What is listed as an image when a folder is searched; a file named on its own (or in a CSV) is read
# whatever its suffix. Upper- and lower-case suffixes alike.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
    | {".pbm", ".pnm", ".pcx", ".tga", ".jp2", ".j2k"}
)

_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}
_ALPHA = {"LA": "LA", "La": "LA", "PA": "RGBA", "RGBA": "RGBA", "RGBa": "RGBA"}
_TO_RGB = {"P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}


class ImageError(DataError):
    """An image file that cannot be read, or whose pixel mode cannot be brought to 8 bits; one line.

    `reason` is the short cause without the path (e.g. "not an image"), for lists of skipped files.
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple:  # whole across processes (a grid's worker raises it in the parent)
        return type(self), (str(self), self.reason)


def is_our_figure(raw: bytes) -> bool:
    """Whether a file's bytes are a PNG the product wrote (`runfolder.save_figure` tags them Software=mixmatch in a
    text chunk, which PIL writes ahead of the pixels): a figure, never a training image."""
    head = raw[:4096]
    return head.startswith(b"\x89PNG\r\n\x1a\n") and b"tEXtSoftware\x00" + OUR_SOFTWARE.encode() in head


def is_image_file(path: str | Path) -> bool:
    """Whether a file's suffix is one of IMAGE_SUFFIXES."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def find_image_files(folder: Path) -> Iterator[Path]:
    """The image files (by suffix) anywhere under `folder`, passing over hidden files and folders (a leading dot:
    the folder cache among them) and the folders the product writes (run, grid and report folders,
    `runfolder.is_output_folder`), wherever a user put them."""
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and not is_output_folder(Path(directory, d))]
        yield from (Path(directory, f) for f in files if not f.startswith(".") and is_image_file(f))


def _stretch(values: np.ndarray) -> np.ndarray:
    """The image's own minimum..maximum to 0..255 (a constant image becomes 0)."""
    finite = np.isfinite(values)
    low = values[finite].min() if finite.any() else 0.0
    high = values[finite].max() if finite.any() else 0.0
    values = np.where(finite, values, low).astype(np.float64)
    return (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)


def _grey_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit, 32-bit integer or float grey values as uint8 by the rules of the module docstring."""
    if mode in _SIXTEEN_BIT or (mode == "I" and values.min() >= 0 and values.max() <= 65535):
        scaled = values.astype(np.float64) / 257
    elif mode == "F" and np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1:
        scaled = values.astype(np.float64) * 255
    else:
        scaled = _stretch(values)
    return np.round(scaled).astype(np.uint8)


def to_8bit(image: Image) -> Image:
    """`image` as mode L (grey) or RGB, its value range scaled to 0..255 as the module docstring says.

    Raises ImageError for a mode that none of those rules cover.
    """
    from PIL import Image as PIL

    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return PIL.fromarray(_grey_to_8bit(np.asarray(image), mode))
    if mode == "P" and "transparency" in image.info:
        mode = "PA"
    if mode in _ALPHA:
        values = np.asarray(image.convert(_ALPHA[mode]), dtype=np.float64)
        over_black = np.round(values[..., :-1] * values[..., -1:] / 255).astype(np.uint8)
        if _ALPHA[mode] == "LA":
            return PIL.fromarray(over_black[..., 0])
        return PIL.fromarray(over_black)
    if mode in _TO_RGB:
        return image.convert("RGB")
    raise ImageError(f"pixel mode {mode} cannot be converted to 8-bit grey or RGB", f"pixel mode {mode}")


def load_image(path: str | Path, size: int, channels: int | None = None) -> np.ndarray:
    """The image file at `path`, prepared as `--dataset folder` prepares training images.

    Turned upright by its EXIF tag, brought to 8 bits (`to_8bit`), its shorter side scaled to `size` with
    bicubic filtering and centre-cropped to a square (an image of that size is left as it is).
    channels: 1 or 3 converts to grey or RGB (a model's input); None keeps grey as grey and colour as RGB.
    Returns uint8 (size, size) for grey, (size, size, 3) for RGB.
    Raises ImageError (one line, naming `path`) for a file PIL cannot read or a mode it cannot convert.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            # JPEG decoders can scale down by up to 8x while decoding: much faster on photos.
            image.draft(image.mode, (size, size))
            image = to_8bit(ImageOps.exif_transpose(image))
            if channels is not None:
                image = image.convert("L" if channels == 1 else "RGB")
            return np.asarray(ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC))
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image file that PIL can read", "not an image") from None
    except ImageError as error:
        raise ImageError(f"cannot read image {path}: {error}", error.reason) from None
    except Exception as error:  # PIL's plugins raise many types (OSError, SyntaxError, struct.error...) on bad files
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'unreadable'}"[:80]
        raise ImageError(f"cannot read image {path}: {reason}", reason) from None
