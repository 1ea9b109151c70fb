"""Reading images and defect masks into numpy arrays, with one error type for every bad file."""

from __future__ import annotations

import io
import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

MaskKind = Literal["pixel", "boxes"]

# Modes Pillow converts to RGB itself (alpha is dropped: inspection images carry no useful alpha).
_PILLOW_RGB_MODES = frozenset(
    {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"}
)
# 8-bit modes without colour (alpha dropped as above).
_GREY_MODES = frozenset({"1", "L", "LA"})
# Modes deeper than 8 bits: rescaled to 0-255 by us, because Pillow's own conversion clips them.
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# Blank detection looks at about this many pixels along the short side: plenty for a spread.
_SPREAD_SAMPLE_SIDE = 256

# The ``max_pixels`` limit below turns an oversized image into a clear ImageReadError before it is
# decoded; Pillow's own warning about the same image would only add noise to the logs.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageReadError(ValueError):
    """A file that cannot be used as an image or mask; ``reason`` is short and human-readable."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    pixel_std: float  # spread of the 0-255 pixel values: near 0 for a blank frame


def probe_image(path: str | os.PathLike, max_pixels: int | None = None) -> ImageInfo:
    """Size, mode and pixel spread of an image, after checking that it decodes completely into a
    supported mode. An image of more than ``max_pixels`` pixels is refused before it is decoded."""
    with _open_decoded(path, max_pixels=max_pixels) as image:
        _check_supported_mode(path, image.mode)
        step = max(1, min(image.width, image.height) // _SPREAD_SAMPLE_SIDE)
        sample = _as_uint8(image)[::step, ::step]
        return ImageInfo(width=image.width, height=image.height, mode=image.mode, pixel_std=float(sample.std()))


def load_image(path: str | os.PathLike) -> np.ndarray:
    """The image as uint8: (H, W) for grey, 16-bit and float images, (H, W, 3) RGB otherwise.

    Grey images stay one channel so that resizing them costs a third (see ``as_rgb``).
    """
    with _open_decoded(path) as image:
        _check_supported_mode(path, image.mode)
        return _as_uint8(image)


def _as_uint8(image: Image.Image) -> np.ndarray:
    if image.mode in _HIGH_DEPTH_MODES:
        return _rescale_to_uint8(np.asarray(image), image.mode)
    # copies: np.asarray would be read-only
    return np.array(image.convert("L" if image.mode in _GREY_MODES else "RGB"))


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """``load_image`` for an encoded image held in memory (PNG, JPEG, BMP, TIFF, ... bytes), with
    the same checks; ``name`` stands in for the path in errors."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageReadError(name, f"expected image bytes, got {type(data).__name__}")
    with _open_decoded(bytes(data), name) as image:
        _check_supported_mode(name, image.mode)
        return _as_uint8(image)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) grey -> (H, W, 3); RGB passes through. Pillow turns grey into RGB the same way."""
    return image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)


def load_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """The image as an (H, W, 3) uint8 array; grey, palette, 16-bit and float images become RGB."""
    return as_rgb(load_image(path))


def load_mask(
    mask_path: str | os.PathLike,
    mask_kind: MaskKind,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Boolean (H, W) defect mask from a pixel-mask image or a Pascal VOC box file.

    ``size`` is the (width, height) of the image the mask belongs to. It is required for box
    files, which are rasterised at that size, and checked against pixel masks when given.
    """
    if mask_kind == "pixel":
        return _load_pixel_mask(mask_path, size)
    if mask_kind == "boxes":
        if size is None:
            raise ValueError("load_mask: box masks need the image size to be rasterised")
        return _rasterise_voc_boxes(mask_path, size)
    raise ValueError(f"load_mask: unknown mask kind {mask_kind!r}; expected 'pixel' or 'boxes'")


def _open_decoded(
    source: str | os.PathLike | bytes, name: str | os.PathLike | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Open and fully decode an image file (or encoded bytes, reported as ``name``), turning every
    decoder failure into ImageReadError. More than ``max_pixels`` pixels are refused before decoding."""
    path = source if name is None else name
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Pillow would then pad truncated files with grey instead of failing, hiding corrupt data.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; set it back to False to read images")

    def opened() -> Image.Image:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)

    try:
        is_empty = len(source) == 0 if isinstance(source, bytes) else os.path.getsize(source) == 0
        if not is_empty:
            # verify() checks container integrity (PNG chunk CRCs, a missing IEND) that load() tolerates.
            with opened() as image:
                image.verify()
            image = opened()
    except Exception as error:
        raise _read_error(path, error) from error
    if is_empty:
        raise ImageReadError(path, "empty file")
    if max_pixels is not None and image.width * image.height > max_pixels:
        image.close()
        raise ImageReadError(path, too_large_reason(image.width, image.height, max_pixels))
    try:
        image.load()
    except Exception as error:
        image.close()
        raise _read_error(path, error) from error
    return image


def too_large_reason(width: int, height: int, max_pixels: int) -> str:
    return f"image too large: {width}x{height} = {width * height:,} pixels, above max_pixels {max_pixels:,}"


def _read_error(path: str | os.PathLike, error: Exception) -> ImageReadError:
    # Pillow's decoders signal corrupt data with many exception types (OSError, SyntaxError,
    # struct.error, IndexError, ...); all of them mean the same thing to us.
    if isinstance(error, UnidentifiedImageError):
        return ImageReadError(path, "unreadable: not an image file or an unsupported format")
    if isinstance(error, Image.DecompressionBombError):
        return ImageReadError(path, f"image too large: {error}")
    if isinstance(error, FileNotFoundError):
        return ImageReadError(path, "unreadable: file not found")
    if "truncated" in str(error).lower():
        return ImageReadError(path, "truncated image")
    return ImageReadError(path, f"unreadable: {error}")


def _check_supported_mode(path: str | os.PathLike, mode: str) -> None:
    if mode not in _PILLOW_RGB_MODES and mode not in _HIGH_DEPTH_MODES:
        raise ImageReadError(path, f"unsupported image mode {mode}")


def _rescale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map a 16-bit, 32-bit or float image onto 0-255.

    The range is the nominal one of the data (0-1 floats, 8-bit or 16-bit values) so the
    brightness of different images stays comparable; data outside those ranges is stretched
    from its own minimum to maximum.
    """
    values = np.nan_to_num(values.astype(np.float64))
    low, high = float(values.min()), float(values.max())
    if mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    elif low >= 0:
        nominal_tops = ((1.0,) if mode == "F" else ()) + (255.0, 65535.0)
        low, high = 0.0, next((top for top in nominal_tops if high <= top), high)
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).clip(0, 255).astype(np.uint8)


def _load_pixel_mask(mask_path: str | os.PathLike, size: tuple[int, int] | None) -> np.ndarray:
    try:
        with _open_decoded(mask_path) as image:
            values = np.asarray(image)
    except ImageReadError as error:
        raise ImageReadError(mask_path, f"mask unreadable: {error.reason}") from error
    mask = values > 0
    if mask.ndim == 3:  # a colour mask marks a defect with any non-zero channel
        mask = mask.any(axis=2)
    height, width = mask.shape
    if size is not None and (width, height) != tuple(size):
        raise ImageReadError(
            mask_path, f"mask size {width}x{height} does not match image {size[0]}x{size[1]}"
        )
    return mask


def _rasterise_voc_boxes(xml_path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    boxes = _read_voc_boxes(xml_path, size)
    mask = np.zeros((height, width), dtype=bool)
    for x_min, y_min, x_max, y_max in boxes:
        # VOC coordinates are 1-based and inclusive; boxes reaching past the border are clipped.
        left, top = max(round(x_min) - 1, 0), max(round(y_min) - 1, 0)
        right, bottom = min(round(x_max), width), min(round(y_max), height)
        mask[top:bottom, left:right] = True
    return mask


def _read_voc_boxes(
    xml_path: str | os.PathLike, size: tuple[int, int]
) -> list[tuple[float, float, float, float]]:
    try:
        root = ET.parse(xml_path).getroot()
        declared = (_xml_number(root, "size/width", default=0), _xml_number(root, "size/height", default=0))
        boxes = [
            tuple(_xml_number(box, name) for name in ("xmin", "ymin", "xmax", "ymax"))
            for box in root.iterfind("object/bndbox")
        ]
    except (OSError, ET.ParseError, ValueError) as error:
        raise ImageReadError(xml_path, f"mask unreadable: {error}") from error
    # Some VOC writers leave <size> at 0; only a real, different size is a mismatch.
    if all(declared) and declared != tuple(size):
        raise ImageReadError(
            xml_path, f"mask size {declared[0]:g}x{declared[1]:g} does not match image {size[0]}x{size[1]}"
        )
    for box in boxes:
        if box[2] < box[0] or box[3] < box[1]:
            raise ImageReadError(xml_path, f"mask unreadable: box {box} has its maximum below its minimum")
    return boxes


def _xml_number(element: ET.Element, tag: str, default: float | None = None) -> float:
    text = element.findtext(tag)
    if text is None or not text.strip():
        if default is None:
            raise ValueError(f"missing <{tag}>")
        return default
    return float(text)
