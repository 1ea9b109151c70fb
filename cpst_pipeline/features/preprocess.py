"""Image -> network input: aspect-preserving resize and normalisation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# Every stage's stride divides 32, so sizes that are multiples of 32 give exact feature grids.
SIZE_MULTIPLE = 32


def fit_input_size(height: float, width: float, short_side: int, max_aspect: float = 4.0) -> tuple[int, int]:
    """(H, W) with the shorter side ``short_side`` and the image's aspect ratio kept.

    Squashing a 500x1250 Kolektor image to a square thins its hairline defects
    by 2.5x; keeping the ratio keeps them visible to the patch features.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    aspect = min(max(height, width) / min(height, width), max_aspect)
    long_side = max(SIZE_MULTIPLE, int(round(short_side * aspect / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    return (long_side, short_side) if height >= width else (short_side, long_side)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of an HxWx3 or HxW uint8 image to ``size`` = (H, W)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def to_batch(images: list[np.ndarray], mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Stack same-sized HxWx3 uint8 images into a normalised NCHW float tensor (channels-last memory)."""
    # NHWC memory viewed as NCHW is already channels-last: one pass converts and normalises.
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32).view(1, 3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], dtype=torch.float32).view(1, 3, 1, 1)
    return torch.addcmul(-shift, pixels, scale).contiguous(memory_format=torch.channels_last)
